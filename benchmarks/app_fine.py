"""The app's fine landscape level (both arms) beside its forward floor, in process (``Explorer``, no HTTP).

For each new compression setting, what the page does first (``compress``, then the quick level), then the fine
level of both arms, timed (wall clock, and the process's CPU seconds), beside its **floor**: the forward passes
the fine level needs per arm (the distinct weight points of its plane and path, plus the one model the path
reports beside its grid) × one forward pass of the arm's probe batch, measured just before (median of 5, one
thread). The arms run in parallel, one thread each, so the floor of both arms is the larger arm's.

``--code DIR`` (repeatable) runs the measurement in a subprocess per code checkout (``DIR`` holds ``craftlab``
and ``.pp/craftlab_app``), alternating the checkouts for ``--rounds`` rounds on the same settings, so that a
before/after comparison shares the machine's load. Used by ``bench_app`` for its fine-level row.

Usage::

    python benchmarks/app_fine.py [--model vit-tiny] [--settings 3] [--rounds 2] [--code DIR --code DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS = [("magnitude", 0.35, 8, None), ("wanda", 0.55, None, None), ("magnitude", 0.65, 6, None),
            ("wanda", 0.45, 8, 8), ("magnitude", 0.25, 4, None), ("wanda", 0.7, None, None)]


def forwards_per_arm(plane_steps: int, path_steps: int, distance: float) -> int:
    """Distinct weight points of the fine level's plane and path, plus the model beside the grid."""
    import numpy as np

    from craftlab.probes._grid import symmetric_axis, with_points

    betas = symmetric_axis(distance, plane_steps)
    alphas = with_points(betas, (0.0, 1.0))
    t = with_points(np.linspace(-0.5, 1.5, path_steps), (0.0, 1.0))
    return len(alphas) * len(betas) + len(set(t.tolist()) - set(alphas.tolist())) + 1


def fine_vs_floor(ex: Any, model: str, settings: list[Any]) -> list[dict[str, Any]]:
    """Time the fine level of `settings` (new to `ex`) after their quick level, each beside its floor."""
    import torch

    from craftlab.probes.landscape import evaluate

    loaded = ex.arms(model)
    plane_steps, path_steps = ex.levels[-1]
    n = forwards_per_arm(plane_steps, path_steps, ex.landscape_distance)
    rows = []
    for s in settings:
        ex.compress(model, s)
        ex.landscape(model, s, level=0, wanted=lambda: False)  # what the page shows first (its background
        while ex.pending():  # follow-up, the fine level, is dropped: timed below); nothing else computing
            time.sleep(0.2)
        floor_wall, floor_cpu = [], []
        for la in loaded:
            ws, cs = [], []
            for _ in range(5):
                w0, c0 = time.perf_counter(), time.thread_time()
                evaluate(la.model, la.ctx.probe)
                ws.append(time.perf_counter() - w0)
                cs.append(time.thread_time() - c0)
            floor_wall.append(n * statistics.median(ws))
            floor_cpu.append(n * statistics.median(cs))
        load = os.getloadavg()[0]
        w0, c0 = time.perf_counter(), time.process_time()
        out = ex.landscape(model, s, level=len(ex.levels) - 1)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        timing = next(iter(out.values()))["plane"].meta.get("timing", {})
        rows.append({"setting": s.label(), "wall_s": wall, "cpu_s": cpu, "floor_wall_s": max(floor_wall),
                     "floor_cpu_s": sum(floor_cpu), "forwards_per_arm": n, "load_avg": load,
                     "threads": torch.get_num_threads(), "computed_points": timing.get("points"),
                     "reused_points": timing.get("reused", 0)})
        print(f"  fine {s.label()}: {wall:.2f} s wall (floor {max(floor_wall):.2f}), {cpu:.2f} CPU s "
              f"(floor {sum(floor_cpu):.2f}), load {load:.1f}", file=sys.stderr, flush=True)
    return rows


def _worker(model: str, k: int, epochs: int) -> list[dict[str, Any]]:
    from craftlab_app.explore.service import Explorer

    from craftlab.settings import make_setting
    from craftlab.threads import configure_threads

    configure_threads(model=model)
    ex = Explorer(epochs=epochs, seeds=(0,), persist=False)
    try:
        return fine_vs_floor(ex, model, [make_setting(*s) for s in SETTINGS[:k]])
    finally:
        ex.close()


def _home_with_seed0_runs() -> str:
    """A fresh CRAFTLAB_HOME whose runs are links to the seed-0 runs of the current one (nothing computed)."""
    from craftlab import cache

    home = Path(tempfile.mkdtemp(prefix="craftlab-app-fine-"))
    (home / "runs").mkdir()
    for r in (cache.home() / "runs").glob("*-s0"):
        (home / "runs" / r.name).symlink_to(r.resolve())
    return str(home)


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"n": len(rows), "wall_p50_s": med("wall_s"), "floor_wall_p50_s": med("floor_wall_s"),
            "cpu_p50_s": med("cpu_s"), "floor_cpu_p50_s": med("floor_cpu_s"),
            "ratio_wall_p50": statistics.median(r["wall_s"] / r["floor_wall_s"] for r in rows),
            "ratio_cpu_p50": statistics.median(r["cpu_s"] / r["floor_cpu_s"] for r in rows),
            "load_avg_p50": med("load_avg"), "forwards_per_arm": rows[0]["forwards_per_arm"],
            "computed_points_per_arm": rows[0]["computed_points"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit-tiny")
    p.add_argument("--settings", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--code", action="append", default=[])
    p.add_argument("--out", default="app_fine", help="writes benchmarks/results/OUT.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(a.model, a.settings, a.epochs)))
        return {}
    codes = a.code or [str(Path(__file__).resolve().parents[1])]
    env = {**os.environ, "CRAFTLAB_HOME": _home_with_seed0_runs(), "CRAFTLAB_THREADS": "1", "OMP_NUM_THREADS": "1"}
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in codes}
    for r in range(a.rounds):
        for c in codes:  # alternated: the checkouts share the machine's load
            print(f"round {r + 1}: {c}", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--worker", "--model", a.model, "--settings",
                                  str(a.settings), "--epochs", str(a.epochs)], capture_output=True, text=True,
                                 env={**env, "PYTHONPATH": f"{c}:{c}/.pp"}, check=True)
            sys.stderr.write(out.stderr[-2000:])
            rows[c] += json.loads(out.stdout.strip().splitlines()[-1])
    res = {"model": a.model, "rounds": a.rounds, "rows": rows, "summary": {c: summary(v) for c, v in rows.items()}}
    out_file = Path(__file__).resolve().parent / "results" / f"{a.out}.json"
    out_file.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
