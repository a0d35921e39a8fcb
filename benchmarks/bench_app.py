"""Benchmark: the CraftLab app as a user meets it, through its HTTP API (gradio_client), and the thread policy.

* **start**: in-process ``craftlab_app.ui.launch`` — server up, first ``/compress`` answer, all default models
  ready (``--fresh``: in an empty ``CRAFTLAB_HOME``, the arms are fine-tuned first); then a later start of
  ``python -m craftlab_app`` in a subprocess (cold imports, cached runs) until the page is served and until
  ``/compress`` answers;
* **slider -> cards**: ``/compress`` latency (p50 / p95) over ``--changes`` changes, in three regimes: a
  sparsity sweep at float bits (curve points, cached by the background sweep), settings never asked before
  (cache misses: prune + quantize + evaluate both arms) and those settings again; beside the floor of a
  Gradio round trip that computes nothing (``/status``);
* **setting -> landscape**: for ``--landscapes`` settings never asked before, one session's ``/compress``
  then ``/landscape_view`` (what the page does: the quick, coarse level of both arms), p50 / p95; the fine
  level after the quick one, in process, beside its forward floor (``benchmarks/app_fine.py``); and a newer
  setting asked while an older one still computes (the older gives up);
* **on screen** (``--on-screen N``): what a user sees in a real browser (Playwright + chromium, headless): N
  values typed in the sparsity box + Enter and N slider drags (pointer down, moved through the values on the
  way, released), each timed from the key press / pointer release until the cards show the new setting's
  tag and until the 1-D slice and both planes do (the quick landscape level), with the load average;
* **threads** (``--threads-study``): a 2-epoch vit-tiny (and resnet-tiny) fine-tune on digits in a fresh
  process with 1 and 2 intra-op threads (``CRAFTLAB_THREADS``), on the machine as it is and with two extra
  processes spinning on the cores.

Usage::

    python -m benchmarks.bench_app [--fresh] [--changes 50] [--landscapes 12] [--on-screen 8] [--threads-study]

Prints a markdown report and writes ``benchmarks/results/app.json`` and ``benchmarks/results/app.md`` (``--out
NAME``: ``NAME.json`` / ``NAME.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "app.json"
REPORT = ROOT / "benchmarks" / "results" / "app.md"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
BITS = ["None", "8", "6", "5", "4", "3"]


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


def _later_start(home: str, models: list[str], epochs: int, timeout: float = 180.0) -> tuple[Any, Any]:
    """Seconds from ``python -m craftlab_app`` to its page being served and to its first /compress answer."""
    from gradio_client import Client

    port = _port()
    env = {**os.environ, "CRAFTLAB_HOME": home, "GRADIO_ANALYTICS_ENABLED": "False",
           "CRAFTLAB_APP_MODELS": ",".join(models), "CRAFTLAB_APP_EPOCHS": str(epochs)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "craftlab_app", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    up = None
    try:
        while up is None and time.perf_counter() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200 and b"<html" in r.read(4096).lower():
                        up = time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        while time.perf_counter() - t0 < timeout:
            try:
                c = Client(f"http://127.0.0.1:{port}/", verbose=False)
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


def _new_settings(rng: random.Random, n: int, seen: set[tuple]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        s = dict(method=rng.choice(["magnitude", "wanda"]), sparsity=round(rng.choice(range(1, 19)) * 0.05, 2),
                 w_bits=rng.choice(BITS), a_bits=rng.choice(["None", "8", "6", "4"]),
                 granularity=rng.choice(["channel", "tensor"]))
        key = tuple(sorted(s.items()))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _landscapes(served_url: str, model: str, settings: list[dict[str, Any]]) -> dict[str, Any]:
    """What the page does on a setting change: /compress (the new view) then /landscape_view (quick)."""
    from gradio_client import Client

    session = Client(served_url, verbose=False)
    quick, total = [], []
    for s in settings:
        t0 = time.perf_counter()
        session.predict(model, s["method"], s["sparsity"], s["w_bits"], s["a_bits"], s["granularity"],
                        api_name="/compress")
        t1 = time.perf_counter()
        session.predict("contour", "log10", api_name="/landscape_view")
        quick.append(time.perf_counter() - t1)
        total.append(time.perf_counter() - t0)
    return {"landscape_view_s": quick, "compress_then_landscape_s": total}


def _newer_cancels_older(served_url: str, model: str, older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """One session asks `older`'s landscape, then `newer`'s 0.3 s later: when does the newer one arrive?"""
    from gradio_client import Client

    session = Client(served_url, verbose=False)
    args = lambda s: (model, s["method"], s["sparsity"], s["w_bits"], s["a_bits"], s["granularity"])  # noqa: E731
    session.predict(*args(older), api_name="/compress")
    t0 = time.perf_counter()
    job = session.submit("contour", "log10", api_name="/landscape_view")
    time.sleep(0.3)
    session.predict(*args(newer), api_name="/compress")  # opens the newer view: the older computation gives up
    session.predict("contour", "log10", api_name="/landscape_view")
    newer_s = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        job.result(timeout=120)
    return {"newer_after_older_s": newer_s}


def _fine(served_url: str, model: str, settings: list[dict[str, Any]]) -> list[float]:
    from gradio_client import Client

    c = Client(served_url, verbose=False)
    return [_timed(c.predict, model, s["method"], s["sparsity"], s["w_bits"], s["a_bits"], s["granularity"], "2:4",
                   "contour", api_name="/landscape")[0] for s in settings]


# ------------------------------------------------------------------------------------------------- threads

_FINETUNE = """
import json, sys, time
from craftlab.threads import configure_threads
import craftlab
n = configure_threads(model=sys.argv[1])
data = craftlab.load_data("digits")
model = craftlab.create_model(sys.argv[1], num_classes=10)
t0 = time.perf_counter()
res = craftlab.finetune(model, data, epochs=2, progress=False)
print(json.dumps({"threads": n, "train_s": sum(h["time_s"] for h in res.history), "wall_s": time.perf_counter() - t0}))
"""


def _spin() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


SHOWN_JS = """([sels, tag]) => sels.every(s => ((document.querySelector(s) || {}).textContent || "").includes(tag))"""
CARDS = ["#acc-plain", "#acc-craft"]
LANDSCAPE = ["#path", "#plane-plain", "#plane-craft"]


def on_screen(url: str, model: str, n: int, rng: random.Random, timeout_ms: int = 180_000) -> dict[str, Any]:
    """Seconds from a typed value's Enter / a slider drag's release until the cards, then the landscapes, show the
    new setting on screen (a real chromium through Playwright), ``n`` of each; {"typed": ..., "drag": ...}."""
    from playwright.sync_api import sync_playwright

    from craftlab.settings import make_setting
    from tests.test_app_browser import CHROMIUM_ARGS, chromium_path

    out: dict[str, Any] = {"typed": {"cards_s": [], "landscape_s": []}, "drag": {"cards_s": [], "landscape_s": []},
                           "load_avg_start": os.getloadavg()[0]}

    def until_shown(page: Any, t0: float, value: float, row: dict[str, list[float]]) -> None:
        tag = f"[{model} · {make_setting('magnitude', value).label()}]"
        page.wait_for_function(SHOWN_JS, arg=[CARDS, tag], timeout=timeout_ms, polling="raf")
        row["cards_s"].append(time.perf_counter() - t0)
        page.wait_for_function(SHOWN_JS, arg=[LANDSCAPE, tag], timeout=timeout_ms, polling="raf")
        row["landscape_s"].append(time.perf_counter() - t0)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url, timeout=timeout_ms)
        page.wait_for_function(SHOWN_JS, arg=[CARDS + LANDSCAPE, f"[{model} · magnitude 50%]"], timeout=timeout_ms)
        box = page.locator("#sparsity input[type=number]")
        typed = rng.sample([round(0.01 * i, 2) for i in range(5, 94) if i % 5], n)  # off the curve grid: new
        for v in typed:
            box.fill(f"{v:g}")
            t0 = time.perf_counter()
            box.press("Enter")
            until_shown(page, t0, v, out["typed"])
        track = page.locator("#sparsity input[type=range]")
        for _ in range(n):
            bb = track.bounding_box()
            start = float(box.input_value())
            target = rng.choice([x for x in (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8) if abs(x - start) > 0.15])
            y = bb["y"] + bb["height"] / 2
            page.mouse.move(bb["x"] + start / 0.95 * bb["width"], y)
            page.mouse.down()
            for k in range(1, 9):  # the values passed on the way, as a hand moves
                page.mouse.move(bb["x"] + (start + (target - start) * k / 8) / 0.95 * bb["width"], y)
                time.sleep(0.03)
            t0 = time.perf_counter()
            page.mouse.up()
            page.wait_for_timeout(50)
            until_shown(page, t0, float(box.input_value()), out["drag"])
        browser.close()
    out["load_avg_end"] = os.getloadavg()[0]
    return out


def threads_study(models: tuple[str, ...] = ("vit-tiny", "resnet-tiny"), repeats: int = 2) -> list[dict[str, Any]]:
    """2-epoch fine-tunes with 1 and 2 intra-op threads, as the machine is and with 2 extra spinning processes."""
    rows = []
    for loaded in (False, True):
        spinners = [_spin() for _ in range(2)] if loaded else []
        try:
            time.sleep(1.0 if loaded else 0.0)
            for model in models:
                for n in (1, 2):
                    for _ in range(repeats):
                        env = {**os.environ, "CRAFTLAB_THREADS": str(n)}
                        env.pop("OMP_NUM_THREADS", None)  # the policy alone decides
                        load = os.getloadavg()[0]
                        out = subprocess.run([sys.executable, "-c", _FINETUNE, model], env=env, cwd=ROOT,
                                             capture_output=True, text=True, timeout=900)
                        rec = json.loads(out.stdout.strip().splitlines()[-1])
                        rows.append({"model": model, "extra_load": loaded, "load_avg": load, **rec})
                        print(f"  threads {n} {model} {'+2 spinners' if loaded else 'as is'}: "
                              f"{rec['train_s']:.2f} s (load {load:.1f})", flush=True)
        finally:
            for p in spinners:
                p.kill()
    return rows


# ------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fresh", action="store_true", help="start in an empty CRAFTLAB_HOME (fine-tunes the arms)")
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--landscapes", type=int, default=12)
    p.add_argument("--models", nargs="+", default=["vit-tiny", "resnet-tiny"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--no-restart", action="store_true", help="skip the later-start measurement")
    p.add_argument("--threads-study", action="store_true", help="also measure the thread policy (minutes)")
    p.add_argument("--threads-from", default=None, help="take the thread study from this earlier app.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-screen", type=int, default=0, help="N typed values and N drags timed on screen (browser)")
    p.add_argument("--out", default="app", help="results/OUT.json and results/OUT.md (default app)")
    a = p.parse_args(argv or [])
    results, report_md = RESULTS.with_name(a.out + ".json"), REPORT.with_name(a.out + ".md")
    if a.fresh:
        os.environ["CRAFTLAB_HOME"] = tempfile.mkdtemp(prefix="craftlab-bench-app-")
    from craftlab_app.ui import launch
    from gradio_client import Client

    from craftlab import cache

    home = str(cache.home())
    model = a.models[0]
    empty = not (Path(home) / "runs").exists() or not any((Path(home) / "runs").iterdir())
    res: dict[str, Any] = {"home": home, "fresh": a.fresh or empty, "models": a.models, "epochs": a.epochs,
                           "changes": a.changes, "load_avg_start": os.getloadavg()[0]}

    # ---- start
    t0 = time.perf_counter()
    demo = launch(port=_port(), prevent_thread_lock=True, models=a.models, epochs=a.epochs)
    ex = demo.explorer
    res["server_up_s"] = time.perf_counter() - t0
    client = Client(demo.local_url, verbose=False)
    client.predict(model, "magnitude", 0.5, None, None, api_name="/compress")
    res["first_answer_s"] = time.perf_counter() - t0
    while ex.status()["stage"] not in ("ready", "failed"):
        time.sleep(0.2)
    res["all_models_ready_s"] = time.perf_counter() - t0
    deadline = time.time() + 900
    while (ex.pending() or (ex.status().get("seed_runs") or {}).get("done", 0)
           < (ex.status().get("seed_runs") or {}).get("total", 0)) and time.time() < deadline:
        time.sleep(0.5)  # let the background sweeps and seed runs finish: stable numbers
    res["background_done_s"] = time.perf_counter() - t0
    res["threads"] = __import__("torch").get_num_threads()
    res["levels"] = [list(lv) for lv in ex.levels]
    print(f"  start: server {res['server_up_s']:.1f}s, first answer {res['first_answer_s']:.1f}s, "
          f"ready {res['all_models_ready_s']:.1f}s, background {res['background_done_s']:.1f}s", flush=True)

    # ---- slider -> cards
    rng = random.Random(a.seed)
    grid = [round(0.05 * i, 2) for i in range(0, 20)]
    sweep = [dict(method=rng.choice(["magnitude", "wanda"]), sparsity=rng.choice(grid), w_bits=None, a_bits=None)
             for _ in range(a.changes)]
    seen: set[tuple] = set()
    cold = _new_settings(rng, a.changes, seen)
    lat: dict[str, list[float]] = {}
    lat["floor: `/status` (no computation; Gradio + client round trip)"] = [
        _timed(client.predict, api_name="/status")[0] for _ in range(a.changes)]
    for name, settings in (("sweep (float, curve points)", sweep), ("new settings (cache misses)", cold),
                           ("the same settings again", cold)):
        lat[name] = [_timed(client.predict, model=model, **s, api_name="/compress")[0] for s in settings]
        print(f"  {name}: p50 {1000 * _pct(lat[name], 0.5):.0f} ms", flush=True)
    res["latency_s"] = lat

    # ---- setting -> landscape
    fresh = _new_settings(rng, a.landscapes + 4, seen)
    while ex.pending():  # a quiet app: nothing else computing
        time.sleep(0.5)
    res["landscape"] = _landscapes(demo.local_url, model, fresh[:a.landscapes])
    q = res["landscape"]["landscape_view_s"]
    print(f"  landscape (quick): p50 {_pct(q, 0.5):.2f} s, p95 {_pct(q, 0.95):.2f} s", flush=True)
    while ex.pending():
        time.sleep(0.5)
    from craftlab_app.explore.service import as_setting

    from benchmarks.app_fine import fine_vs_floor, summary

    fine = fine_vs_floor(ex, model, [as_setting(s) for s in fresh[a.landscapes:a.landscapes + 2]])  # beside the floor
    res["landscape_fine_s"] = [r["wall_s"] for r in fine]
    res["landscape_fine"] = {"rows": fine, "summary": summary(fine)}
    while ex.pending():
        time.sleep(0.5)
    res["landscape"].update(_newer_cancels_older(demo.local_url, model, *fresh[a.landscapes + 2:a.landscapes + 4]))
    res["landscape_repeat_s"] = _fine(demo.local_url, model, fresh[a.landscapes:a.landscapes + 1])[0]
    res["sharpness_s"], _ = _timed(client.predict, api_name="/sharpness")
    if a.on_screen:
        while ex.pending():
            time.sleep(0.5)
        res["on_screen"] = on_screen(demo.local_url, model, a.on_screen, rng)
        for how in ("typed", "drag"):
            r = res["on_screen"][how]
            print(f"  on screen, {how}: cards p50 {_pct(r['cards_s'], 0.5):.2f} s, landscape p50 "
                  f"{_pct(r['landscape_s'], 0.5):.2f} s", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):  # Gradio prints "Closing server ..."
        demo.close()
    ex.close()

    # ---- later start
    res["later_start_up_s"], res["later_start_s"] = (None, None) if a.no_restart else _later_start(
        home, a.models, a.epochs)
    res["threads_study"] = threads_study() if a.threads_study else None
    if a.threads_from:
        res["threads_study"] = json.loads(Path(a.threads_from).read_text())["threads_study"]
        res["threads_study_from"] = a.threads_from
    res["load_avg_end"] = os.getloadavg()[0]

    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(res, indent=1))
    text = report(res, model)
    report_md.write_text(text)
    print(text)
    return res


def report(res: dict[str, Any], model: str) -> str:
    """The markdown report of a run (also written to ``benchmarks/results/app.md``)."""
    out = io.StringIO()
    w = lambda s="": print(s, file=out)  # noqa: E731
    n = res["changes"]
    w(f"Machine load average {res['load_avg_start']:.1f} at the start, {res['load_avg_end']:.1f} at the end "
      f"({os.cpu_count()} cores); torch {res['threads']} thread(s) (the thread policy).\n")
    w(f"`/compress` latency through gradio_client for {model} (both arms, seed 0: FP and compressed test "
      f"accuracy), {n} changes per row, after the background work finished.\n")
    w("| slider changes | p50 (ms) | p95 (ms) | max (ms) |")
    w("|---|---|---|---|")
    for name, xs in res["latency_s"].items():
        w(f"| {name} | {1000 * _pct(xs, 0.5):.0f} | {1000 * _pct(xs, 0.95):.0f} | {1000 * max(xs):.0f} |")
    w()
    lv = res["levels"]
    land = res["landscape"]
    q, t = land["landscape_view_s"], land["compress_then_landscape_s"]
    w(f"Setting change -> landscapes of both arms (1-D path with its 2nd-order prediction + 2-D plane), "
      f"{len(q)} settings never asked before, one session, nothing else computing in the app. The page shows the "
      f"quick level ({lv[0][0]}×{lv[0][0]} plane, {lv[0][1]}-point path) first; the fine level "
      f"({lv[-1][0]}×{lv[-1][0]}, {lv[-1][1]} points) follows from the background.\n")
    w("| landscape | p50 (s) | p95 (s) | max (s) |")
    w("|---|---|---|---|")
    w(f"| `/landscape_view` (quick level, after `/compress`) | {_pct(q, 0.5):.2f} | {_pct(q, 0.95):.2f} | "
      f"{max(q):.2f} |")
    w(f"| `/compress` + `/landscape_view` | {_pct(t, 0.5):.2f} | {_pct(t, 0.95):.2f} | {max(t):.2f} |")
    fine = res["landscape_fine_s"]
    sm = (res.get("landscape_fine") or {}).get("summary")
    if sm:  # in process, after the quick level (what the background computes), beside its forward floor
        w(f"| fine level of both arms (after the quick one; floor {sm['floor_wall_p50_s']:.2f} s = "
          f"{sm['forwards_per_arm']} forwards per arm, arms in parallel; ratio {sm['ratio_wall_p50']:.2f}×) | "
          f"{_pct(fine, 0.5):.2f} | – | {max(fine):.2f} |")
    else:
        w(f"| fine level (`/landscape`, stateless, new setting) | {_pct(fine, 0.5):.2f} | – | {max(fine):.2f} |")
    w(f"| a newer setting asked 0.3 s into an older one's computation: newer answered after | "
      f"{land['newer_after_older_s']:.2f} | – | – |")
    w(f"| repeated (cached) | {res['landscape_repeat_s']:.3f} | – | – |")
    w(f"| sharpness of both arms (cached after the first page load) | {res['sharpness_s']:.3f} | – | – |")
    w()
    shown = res.get("on_screen")
    if shown:
        k = len(shown["typed"]["cards_s"])
        w(f"**On screen** (headless chromium via Playwright, the same server; load average "
          f"{shown['load_avg_start']:.1f} → {shown['load_avg_end']:.1f}): from Enter after a value typed in the "
          f"sparsity box ({k} values off the curve grid, so new) or from releasing a slider drag ({k} drags that "
          "pass other values on the way) until the cards, then the 1-D slice and both planes (quick level), show "
          "the new setting's tag. This is what a user waits; the API rows above are one request each.\n")
        w("| on screen | cards p50 (s) | cards max (s) | landscape p50 (s) | landscape max (s) |")
        w("|---|---|---|---|---|")
        for how, what in (("typed", "typed value + Enter"), ("drag", "slider drag, from release")):
            r = shown[how]
            w(f"| {what} | {_pct(r['cards_s'], 0.5):.2f} | {max(r['cards_s']):.2f} | "
              f"{_pct(r['landscape_s'], 0.5):.2f} | {max(r['landscape_s']):.2f} |")
        w()
    where = "an empty CRAFTLAB_HOME (arms fine-tuned first)" if res["fresh"] else "the cache"
    w(f"| start ({', '.join(res['models'])}, {res['epochs']} epochs; from {where}) | s |")
    w("|---|---|")
    w(f"| server up (in-process launch; torch and the models load in the background) | {res['server_up_s']:.1f} |")
    w(f"| first /compress answer for {model} | {res['first_answer_s']:.1f} |")
    w(f"| all default models ready | {res['all_models_ready_s']:.1f} |")
    w(f"| background curve points and extra-seed runs done | {res['background_done_s']:.1f} |")
    runs = res.get("later_start_runs")
    if runs:  # several later starts: median (range)
        for key, what in (("page_s", "page served"), ("first_answer_s", "first /compress answer")):
            xs = [r[key] for r in runs if r[key] is not None]
            w(f"| later start (cached runs): `python -m craftlab_app` to {what}, median of {len(xs)} (range; load "
              f"~{_pct([r['load_avg'] for r in runs], 0.5):.1f}) | {_pct(xs, 0.5):.1f} ({min(xs):.1f}–{max(xs):.1f}) |")
    else:
        for key, what in (("later_start_up_s", "page served"), ("later_start_s", "first /compress answer")):
            v = res.get(key)
            w(f"| later start (cached runs): `python -m craftlab_app` to {what} | "
              f"{'n/a' if v is None else f'{v:.1f}'} |")
    before = res.get("before")
    if before:
        w()
        w(f"Before / after, in-process (`Explorer.landscape`, no HTTP), the same {before['n']} new settings of "
          f"{model}, one after the other: {before['what']}.\n")
        w("| landscape of a new setting | p50 (s) | p95 (s) | max (s) | load avg |")
        w("|---|---|---|---|---|")
        for row in before["rows"]:
            w(f"| {row['code']} | {row['p50']:.2f} | {row['p95']:.2f} | {row['max']:.2f} | ~{row['load']:.1f} |")
    study = res.get("threads_study")
    if study:
        w()
        w("Thread policy: a 2-epoch fine-tune on digits (training time of the 2 epochs, median of the repeats) in a "
          "fresh process with `CRAFTLAB_THREADS` = 1 or 2, on the shared 2-core machine as other users left it "
          "(quiet or busy) and with two extra processes spinning on the cores"
          + (" (from `--threads-study` runs on the same machine)" if res.get("threads_study_from") else "")
          + ".\n")
        w("| model | machine | 1 thread (s) | 2 threads (s) | 2 / 1 |")
        w("|---|---|---|---|---|")
        cond = lambda r: r.get("condition") or ("loaded (+2 spinners)" if r["extra_load"] else "as is")  # noqa: E731
        for model_name in dict.fromkeys(r["model"] for r in study):
            for c in dict.fromkeys(cond(r) for r in study):
                rows = [r for r in study if r["model"] == model_name and cond(r) == c]
                med = {nt: _pct([r["train_s"] for r in rows if r["threads"] == nt], 0.5) for nt in (1, 2)}
                loads = ", ".join(f"{r['load_avg']:.1f}" for r in rows)
                w(f"| {model_name} | {c} (load avg at each run: {loads}) | {med[1]:.2f} | {med[2]:.2f} | "
                  f"{med[2] / med[1]:.2f}x |")
    return out.getvalue()


if __name__ == "__main__":
    main(sys.argv[1:])
