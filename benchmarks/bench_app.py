"""Benchmark: the CraftLab app as a user meets it, through its HTTP API (gradio_client).

* start: in-process ``craftlab_app.ui.launch`` — server up, first ``/compress`` answer for the default model, all
  default models ready (with ``--fresh``, in an empty ``CRAFTLAB_HOME``: the arms are fine-tuned first);
  then a later start of ``python -m app`` in a subprocess (cold imports, cached runs) until ``/compress`` answers;
* slider -> answer: ``/compress`` latency (p50 / p95) over ``--changes`` slider moves, in three regimes:
  a sparsity sweep at float bits (points of the accuracy curves, cached by the background sweep), settings
  never asked before (every one a cache miss: prune + quantize + evaluate both arms), and those same
  settings again;
* landscape: ``/landscape`` for a new setting (1-D path + 2-D plane of both arms) and repeated; the
  contour -> surface switch through ``/landscape_kind`` (the session's setting of its last ``/compress``).

Usage::

    python -m benchmarks.bench_app [--fresh] [--changes 50] [--models vit-tiny resnet-tiny] [--epochs 8]

Prints a markdown table and writes ``benchmarks/results/app.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "app.json"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _timed(fn, *args, **kw) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def _later_start(home: str, models: list[str], epochs: int, timeout: float = 120.0) -> tuple[Any, Any]:
    """Seconds from ``python -m app`` to its page being served and to its first /compress answer (runs cached)."""
    from gradio_client import Client

    port = _port()
    env = {**os.environ, "CRAFTLAB_HOME": home, "GRADIO_ANALYTICS_ENABLED": "False",
           "CRAFTLAB_APP_MODELS": ",".join(models), "CRAFTLAB_APP_EPOCHS": str(epochs)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    up = None
    try:
        while time.perf_counter() - t0 < timeout:
            try:
                c = Client(f"http://127.0.0.1:{port}/", verbose=False)
                up = up or time.perf_counter() - t0
                c.predict(models[0], "magnitude", 0.5, None, None, api_name="/compress")
                return up, time.perf_counter() - t0
            except Exception:
                time.sleep(0.2)
        return up, None
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fresh", action="store_true", help="start in an empty CRAFTLAB_HOME (fine-tunes the arms)")
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--models", nargs="+", default=["vit-tiny", "resnet-tiny"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-restart", action="store_true", help="skip the later-start measurement")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv or [])
    if a.fresh:
        os.environ["CRAFTLAB_HOME"] = tempfile.mkdtemp(prefix="craftlab-bench-app-")
    from craftlab_app.ui import launch
    from gradio_client import Client

    from craftlab import cache

    home = str(cache.home())
    model = a.models[0]
    res: dict[str, Any] = {"home": home, "fresh": a.fresh, "models": a.models, "epochs": a.epochs,
                           "threads": a.threads, "changes": a.changes}

    # ---- start
    t0 = time.perf_counter()
    demo = launch(port=_port(), prevent_thread_lock=True, models=a.models, epochs=a.epochs, threads=a.threads)
    ex = demo.explorer
    res["server_up_s"] = time.perf_counter() - t0
    client = Client(demo.local_url, verbose=False)
    client.predict(model, "magnitude", 0.5, None, None, api_name="/compress")
    res["first_answer_s"] = time.perf_counter() - t0
    while ex.status()["stage"] not in ("ready", "failed"):
        time.sleep(0.2)
    res["all_models_ready_s"] = time.perf_counter() - t0
    deadline = time.time() + 600
    while ex.pending() and time.time() < deadline:  # let the background sweeps finish: stable numbers
        time.sleep(0.5)
    res["background_done_s"] = time.perf_counter() - t0
    print(f"  start: server {res['server_up_s']:.1f}s, first answer {res['first_answer_s']:.1f}s, "
          f"ready {res['all_models_ready_s']:.1f}s, sweeps {res['background_done_s']:.1f}s", flush=True)

    # ---- slider -> answer
    rng = random.Random(a.seed)
    grid = [round(0.05 * i, 2) for i in range(0, 20)]
    sweep = [dict(method=rng.choice(["magnitude", "wanda"]), sparsity=rng.choice(grid), w_bits=None, a_bits=None)
             for _ in range(a.changes)]
    seen: set[tuple] = set()
    cold: list[dict[str, Any]] = []
    while len(cold) < a.changes:  # settings off the curves' grids, each new
        s = dict(method=rng.choice(["magnitude", "wanda"]), sparsity=rng.choice(grid[1:]),
                 w_bits=str(rng.choice([8, 6, 5, 4, 3])), a_bits=str(rng.choice([8, 6, 4])),
                 granularity=rng.choice(["channel", "tensor"]))
        key = tuple(sorted(s.items()))
        if key not in seen:
            seen.add(key)
            cold.append(s)
    lat: dict[str, list[float]] = {}
    floor = [_timed(client.predict, api_name="/status")[0] for _ in range(a.changes)]
    lat["floor: `/status` (no computation; Gradio + client round trip)"] = floor
    for name, settings in (("sweep (float, curve points)", sweep), ("new settings (cache misses)", cold),
                           ("the same settings again", cold)):
        lat[name] = [_timed(client.predict, model=model, **s, api_name="/compress")[0] for s in settings]
        print(f"  {name}: p50 {1000 * statistics.median(lat[name]):.0f} ms", flush=True)
    res["latency_s"] = lat

    # ---- landscapes
    land_args = (model, "wanda", 0.6, "4", "None", "channel", "2:4", "contour")
    res["landscape_first_s"], _ = _timed(client.predict, *land_args, api_name="/landscape")
    res["landscape_repeat_s"], _ = _timed(client.predict, *land_args, api_name="/landscape")
    client.predict(*land_args[:-1], api_name="/compress")  # the session's setting, as a slider release sets it
    res["landscape_kind_switch_s"], _ = _timed(client.predict, "surface", api_name="/landscape_kind")
    res["landscape_grid"] = f"{ex.landscape_steps}x{ex.landscape_steps} plane + {ex.path_steps}-point path"
    res["sharpness_s"], _ = _timed(client.predict, model, api_name="/sharpness")
    with contextlib.redirect_stdout(io.StringIO()):  # Gradio prints "Closing server ..."
        demo.close()
    ex.close()

    # ---- later start
    res["later_start_up_s"], res["later_start_s"] = (None, None) if a.no_restart else _later_start(
        home, a.models, a.epochs)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    _print(res, model)
    return res


def _print(res: dict[str, Any], model: str) -> None:
    n = res["changes"]
    print(f"`/compress` latency through gradio_client for {model} (both arms: FP and compressed test accuracy), "
          f"{n} slider changes per row, torch {res['threads']} thread(s), after the background sweeps finished.\n")
    print("| slider changes | p50 (ms) | p95 (ms) | max (ms) |")
    print("|---|---|---|---|")
    for name, xs in res["latency_s"].items():
        print(f"| {name} | {1000 * _pct(xs, 0.5):.0f} | {1000 * _pct(xs, 0.95):.0f} | {1000 * max(xs):.0f} |")
    print()
    print("| landscape (`/landscape`, both arms: " + res["landscape_grid"] + ") | s |")
    print("|---|---|")
    print(f"| first (new setting: compress, path with 2nd-order terms, plane) | {res['landscape_first_s']:.2f} |")
    print(f"| repeated (cached) | {res['landscape_repeat_s']:.3f} |")
    print(f"| contour -> surface (cached, figures only) | {res['landscape_kind_switch_s']:.3f} |")
    print(f"| sharpness of both arms (cached after the first page load) | {res['sharpness_s']:.3f} |")
    print()
    where = "an empty CRAFTLAB_HOME (arms fine-tuned first)" if res["fresh"] else "the cache"
    print(f"| start ({', '.join(res['models'])}, {res['epochs']} epochs; from {where}) | s |")
    print("|---|---|")
    print(f"| server up (in-process launch) | {res['server_up_s']:.1f} |")
    print(f"| first /compress answer for {model} | {res['first_answer_s']:.1f} |")
    print(f"| all default models ready | {res['all_models_ready_s']:.1f} |")
    print(f"| background curve sweeps done | {res['background_done_s']:.1f} |")
    for key, what in (("later_start_up_s", "page served"), ("later_start_s", "first /compress answer")):
        v = res.get(key)
        print(f"| later start (cached runs): `python -m app` to {what} | {'n/a' if v is None else f'{v:.1f}'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
