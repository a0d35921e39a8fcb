"""Benchmark 1: SAM step time / base optimizer step time (the floor is 2.0x: two forward/backward passes).

Run: ``python -m benchmarks.bench_sam`` (writes benchmarks/results/sam.json and prints a markdown table).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import craftlab
from craftlab.train.sam import SAM, frozen_bn

RESULTS = Path(__file__).parent / "results"


def _time_steps(model, x, y, sam: bool, steps: int = 30, warmup: int = 5, clock=time.process_time) -> float:
    """Median seconds per optimizer step. `clock`: process CPU time by default (robust on a shared machine;
    equal to wall time for a single-threaded run on an idle core)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = SAM(params, torch.optim.AdamW, rho=0.05, lr=1e-4) if sam else torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = clock()
        F.cross_entropy(model(x), y).backward()
        if sam:
            opt.first_step(zero_grad=True)
            with frozen_bn(model):
                F.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(clock() - t0)
    return statistics.median(times)


def main(batch_size: int = 64) -> list[dict]:
    data = craftlab.load_data("digits")
    x, y = next(iter(data.loader("train", batch_size=batch_size)))
    rows = []
    for name in ("vit-tiny", "resnet-tiny"):
        model = craftlab.create_model(name, num_classes=10)
        # interleave repetitions so drift on a busy machine hits both arms alike
        base, sam = [], []
        for _ in range(3):
            base.append(_time_steps(model, x, y, sam=False))
            sam.append(_time_steps(model, x, y, sam=True))
        b, s = statistics.median(base), statistics.median(sam)
        rows.append({"model": name, "batch": batch_size, "adamw_step_ms": 1e3 * b, "sam_step_ms": 1e3 * s,
                     "ratio": s / b})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sam.json").write_text(json.dumps(rows, indent=1))
    print(f"Median CPU time per step over 3 interleaved rounds of 30 steps, {torch.get_num_threads()} thread(s).\n")
    print("| model | batch | AdamW step (ms) | AdamW+SAM step (ms) | SAM / AdamW |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['adamw_step_ms']:.1f} | {r['sam_step_ms']:.1f} "
              f"| {r['ratio']:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
