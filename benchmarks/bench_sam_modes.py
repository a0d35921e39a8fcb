"""Benchmark: efficient SAM modes — step time ÷ AdamW step × benefit retained where SAM has a benefit.

1. Cost: CPU time per optimizer step (mean over the steps of a round, so LookSAM's and the random mode's
   occasional two-pass steps count at their frequency), every arm timed in the same interleaved rounds, on
   vit-tiny and resnet-tiny at batch 64.
2. Benefit retained: resnet-tiny fine-tuned on digits (the model and endpoints where SAM 0.05 helped in the
   CrAFT table: global magnitude 50 % without BatchNorm re-estimation, W4A4), every arm on the same seeds;
   gain = arm − AdamW post-compression test accuracy, paired by seed; retained = mean gain of the arm ÷ mean
   gain of full SAM, with a 95 % bootstrap interval over seeds (resampled jointly for both gains).

Run: ``python -m benchmarks.bench_sam_modes [--seeds 5] [--epochs 3]`` (writes benchmarks/results/sam_modes.json,
``sam_modes_e8.json`` for ``--epochs 8``).
A small benchmark for a shared 2-core machine: few seeds, few epochs; the intervals say how little 5 seeds decide.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import craftlab
from craftlab.train.sam import SAM, frozen_bn, parse_sam_mode

RESULTS = Path(__file__).parent / "results"
# arm -> (rho, sam_mode); None: plain AdamW
ARMS = {
    "AdamW": None,
    "SAM 0.05": (0.05, "sam"),
    "LookSAM k=5": (0.05, "looksam:5"),
    "random 25%": (0.05, "random:0.25"),
    "MSAM 0.05": (0.05, "msam"),
    "MSAM 0.3": (0.3, "msam"),
    "RWP 0.01": (0.01, "rwp"),
}
ENDPOINTS = ("magnitude 50%", "W4A4")


def _round(model, x, y, arm, steps: int, warmup: int = 3) -> float:
    """Mean CPU seconds per step over `steps` steps (after `warmup`) of a fresh optimizer."""
    params = [p for p in model.parameters() if p.requires_grad]
    if ARMS[arm] is None:
        opt = torch.optim.AdamW(params, lr=1e-4)
    else:
        rho, mode = ARMS[arm]
        opt = SAM(params, torch.optim.AdamW, rho=rho, lr=1e-4, model=model, **parse_sam_mode(mode).options())
    model.train()
    t_start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t_start = time.process_time()
        if ARMS[arm] is None:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            continue
        if opt.plan_step():
            F.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
            with frozen_bn(model):
                F.cross_entropy(model(x), y).backward()
        else:
            opt.perturb()
            F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    return (time.process_time() - t_start) / steps


def step_costs(rounds: int = 3, steps: int = 20) -> list[dict]:
    data = craftlab.load_data("digits")
    x, y = next(iter(data.loader("train", batch_size=64)))
    rows = []
    for name in ("vit-tiny", "resnet-tiny"):
        base = craftlab.create_model(name, num_classes=10, progress=False)
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for _ in range(rounds):  # interleaved: drift on a busy machine hits every arm alike
            for arm in ARMS:
                times[arm].append(_round(base, x, y, arm, steps))  # SAM restores w; AdamW moves it a little
        ref = statistics.median(times["AdamW"])
        for arm in ARMS:
            t = statistics.median(times[arm])
            rows.append({"model": name, "arm": arm, "step_ms": 1e3 * t, "ratio": t / ref})
    return rows


def _bootstrap_ratio(num: np.ndarray, den: np.ndarray, n: int = 4000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(num), size=(n, len(num)))
    d = den[idx].mean(1)
    r = num[idx].mean(1)[d > 0] / d[d > 0]
    return (float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))) if len(r) else (float("nan"),) * 2


def benefit(seeds: int, epochs: int) -> tuple[dict, dict]:
    data = craftlab.load_data("digits", model=craftlab.build_model("resnet-tiny"))
    acc: dict[str, dict[str, list[float]]] = {arm: {e: [] for e in ("FP32", *ENDPOINTS)} for arm in ARMS}
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        base = craftlab.create_model("resnet-tiny", num_classes=10, seed=seed, progress=False)
        for arm, cfg in ARMS.items():
            rho, mode = cfg or (0.0, "sam")
            res = craftlab.finetune(base, data, epochs=epochs, sam_rho=rho, sam_mode=mode, seed=seed, progress=False)
            wall[arm].append(res.train_time_s)
            df = craftlab.sweep({arm: res.model}, data, list(ENDPOINTS), progress=False)
            acc[arm]["FP32"].append(100 * float(df["fp_accuracy"].iloc[0]))
            for _, row in df.iterrows():
                acc[arm][row["setting"]].append(100 * row["accuracy"])
            print(f"  seed {seed} {arm}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in acc[arm].items() if v)
                  + f" ({res.train_time_s:.0f}s)", flush=True)
    return acc, wall


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args(argv or [])
    costs = step_costs()
    acc, wall = benefit(a.seeds, a.epochs)
    out = {"costs": costs, "accuracy": acc, "train_time_s": wall, "seeds": a.seeds, "epochs": a.epochs}
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if a.epochs == 3 else f"_e{a.epochs}"
    (RESULTS / f"sam_modes{suffix}.json").write_text(json.dumps(out, indent=1))

    print(f"**Cost**: mean CPU time per step (batch 64, {torch.get_num_threads()} thread(s)), median of 3 "
          "interleaved rounds of 20 steps; ratio to AdamW in the same rounds.\n")
    print("| arm | vit-tiny ms | ÷ AdamW | resnet-tiny ms | ÷ AdamW | fine-tuning wall ÷ AdamW (resnet-tiny) |")
    print("|---|---|---|---|---|---|")
    by = {(r["model"], r["arm"]): r for r in costs}
    adam_wall = np.array(wall["AdamW"])
    for arm in ARMS:
        v, r = by[("vit-tiny", arm)], by[("resnet-tiny", arm)]
        w = float(np.mean(np.array(wall[arm]) / adam_wall))
        print(f"| {arm} | {v['step_ms']:.1f} | {v['ratio']:.2f}x | {r['step_ms']:.1f} | {r['ratio']:.2f}x "
              f"| {w:.2f}x |")
    print(f"\n**Benefit** on resnet-tiny → digits, {a.seeds} seeds (0..{a.seeds - 1}), {a.epochs} epochs, "
          "test accuracy % (mean ± sd); gain = arm − AdamW paired by seed [95 % bootstrap CI over seeds]; "
          "retained = mean gain ÷ SAM 0.05's mean gain [95 % bootstrap CI].\n")
    for e in ("FP32", *ENDPOINTS):
        sam_gain = np.array(acc["SAM 0.05"][e]) - np.array(acc["AdamW"][e])
        print(f"*{e}* (SAM 0.05 − AdamW: {sam_gain.mean():+.1f} pts)\n")
        print("| arm | accuracy % | gain (pts) | retained |")
        print("|---|---|---|---|")
        for arm in ARMS:
            x = np.array(acc[arm][e])
            gain = x - np.array(acc["AdamW"][e])
            rng = np.random.default_rng(1)
            boot = gain[rng.integers(0, len(gain), size=(4000, len(gain)))].mean(1)
            gtxt = f"{gain.mean():+.1f} [{np.percentile(boot, 2.5):+.1f}, {np.percentile(boot, 97.5):+.1f}]"
            if arm == "AdamW":
                gtxt, ret = "—", "—"
            elif e == "FP32" or sam_gain.mean() <= 0:
                ret = "— (SAM gained nothing here)" if e != "FP32" else "—"
            else:
                lo, hi = _bootstrap_ratio(gain, sam_gain)
                ret = f"{100 * gain.mean() / sam_gain.mean():.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"
            print(f"| {arm} | {x.mean():.1f} ± {x.std(ddof=1):.1f} | {gtxt} | {ret} |")
        print()
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
