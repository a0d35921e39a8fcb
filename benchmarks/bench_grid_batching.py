"""Benchmark: a landscape plane evaluated point by point (weights written in place) vs several points per forward
pass (stacked weights through ``torch.vmap(functional_call)``, ``plane(..., batch_points=P)``), beside the
forward floor (the same number of plain eval forwards of the batch).

Run: ``python -m benchmarks.bench_grid_batching [--steps 11] [--repeats 3]`` (CPU time, medians; one 64-image
digits validation batch, as the app's fine landscape).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import craftlab
from craftlab import landscape as L

POINTS = (1, 11, 40)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv or [])
    data = craftlab.load_data("digits")
    x, y = next(iter(data.loader("val", batch_size=64)))
    n = a.steps ** 2
    rows = []
    for name in ("vit-tiny", "resnet-tiny"):
        model = craftlab.create_model(name, num_classes=10, progress=False).eval()
        times: dict[str, list[float]] = {"floor": [], **{f"P={k}": [] for k in POINTS}}
        for _ in range(a.repeats):  # interleaved
            with torch.inference_mode():
                t0 = time.process_time()
                for _ in range(n):
                    model(x)
                times["floor"].append(time.process_time() - t0)
            for k in POINTS:
                t0 = time.process_time()
                L.plane(model, (x, y), steps=a.steps, batch_points=k)
                times[f"P={k}"].append(time.process_time() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": name, **med})
    print(f"{a.steps}x{a.steps} plane ({n} points), 64 images, CPU seconds (median of {a.repeats} interleaved rounds), "
          f"{torch.get_num_threads()} thread(s); ratio to the forward floor in brackets.\n")
    print("| model | forward floor | point by point (P=1) | " + " | ".join(f"vmap P={k}" for k in POINTS[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(POINTS) - 1))
    for r in rows:
        cells = [f"{r[f'P={k}']:.2f} s ({r[f'P={k}'] / r['floor']:.2f}x)" for k in POINTS]
        print(f"| {r['model']} | {r['floor']:.2f} s | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
