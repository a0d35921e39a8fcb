"""Benchmark: mixed-precision supernet with LoRA on the embedded default (vit-tiny fine-tuned on digits, 3 seeds).

* the Pareto front (test accuracy vs BitOPs) of the searched subnets (evolutionary search on the validation split
  under budgets of 3-8% of the FP32 BitOPs) vs uniform PTQ (``craftlab.quantize`` W8A8/W6A6/W4A8/W4A4) and vs the
  uniform-bit subnets of the same supernet;
* the BitOPs reduction at <= 1 point accuracy loss (subnet chosen on validation, accuracy measured on test);
* supernet training time per epoch and training memory, per-bit LoRA vs shared LoRA vs full weights, on vit-tiny
  and on a ViT-B-sized stand-in (random init, 224 px, batch 2);
* search time (uncached).

The supernets come from the cache (``craftlab supernet train --preset notebook`` builds them; missing ones are
trained here). Run: ``python -m benchmarks.bench_supernet`` (prints markdown, writes benchmarks/results/supernet.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

import craftlab
from craftlab.supernet import build_supernet, evaluate_configs, get_supernet, load_supernet, study, train_supernet
from craftlab.supernet.search import search_budgets

RESULTS = Path(__file__).parent / "results"
SEEDS = (0, 1, 2)
SETTINGS = [(8, 8), (6, 6), (4, 8), (4, 4), (3, 4), (2, 4)]


def _ms(values, scale=100.0, digits=1) -> str:
    s = pd.Series(values, dtype=float) * scale
    return f"{s.mean():.{digits}f} ± {s.std():.{digits}f}" if len(s) > 1 else f"{s.mean():.{digits}f}"


def pareto_section(data) -> tuple[list[str], pd.DataFrame]:
    specs = study.notebook_specs(SEEDS)
    rows, t_search = [], {}
    val_fp32 = {}
    for s in SEEDS:
        base = craftlab.load_checkpoint(craftlab.get_run(specs[f"per-bit/s{s}"].base_run(), progress=False))
        val_fp32[s] = craftlab.evaluate(base, data.val)["accuracy"]
        for r, v in zip(study.ptq_baselines(base, data), study.ptq_baselines(base, data, split="val")):
            rows.append({"seed": s, "kind": "FP32" if r["label"] == "FP32" else "uniform PTQ", **r,
                         "val_accuracy": v["accuracy"]})
        sn = load_supernet(get_supernet(specs[f"per-bit/s{s}"]))
        cfgs = [sn.space.uniform(w, a) for w, a in SETTINGS]
        vals = evaluate_configs(sn, data, cfgs, split="val")
        for r, v in zip(evaluate_configs(sn, data, cfgs), vals):
            rows.append({"seed": s, "kind": "uniform subnet", "label": r["label"].split()[0], "accuracy": r["accuracy"],
                         "bitops": r["bitops"], "val_accuracy": v["accuracy"]})
        t0 = time.perf_counter()
        _, rep = study.main_search(s, data, sn)
        t_search[s] = time.perf_counter() - t0
        tests = evaluate_configs(sn, data, [r.best["config"] for r in rep.results])
        for r, t in zip(rep.results, tests):
            rows.append({"seed": s, "kind": "searched", "label": f"≤ {100 * r.budget / rep.references['FP32']:.1f}%",
                         "accuracy": t["accuracy"], "bitops": r.best["bitops"], "val_accuracy": r.best["accuracy"]})
    df = pd.DataFrame(rows)
    fp32_bitops = df.loc[df["kind"] == "FP32", "bitops"].iloc[0]
    df["pct"] = 100 * df["bitops"] / fp32_bitops
    lines = [f"**Pareto front** (test accuracy %, mean ± sd over {len(SEEDS)} seeds; BitOPs in % of FP32 = "
             f"{fp32_bitops:.3g} per image; search on the validation split, population 16, 6 generations)", "",
             "| kind | setting / budget | BitOPs % FP32 | test accuracy (%) |", "|---|---|---|---|"]
    for (kind, label), part in df.groupby(["kind", "label"], sort=False):
        lines.append(f"| {kind} | {label} | {_ms(part['pct'], 1, 2)} | {_ms(part['accuracy'])} |")
    lines += ["", "**BitOPs reduction at ≤ 1 point accuracy loss** (per seed: the cheapest subnet whose validation "
              "accuracy is within 1 pp of the FP32 model's; its test accuracy change vs FP32)", "",
              "| candidates | reduction vs FP32 (%) | reduction vs W8A8 (%) | test accuracy change (pp) |",
              "|---|---|---|---|"]
    w8a8 = df[(df["kind"] == "uniform PTQ") & (df["label"] == "W8A8")]["pct"].iloc[0]
    fp32_test = df[df["kind"] == "FP32"].set_index("seed")["accuracy"]
    for kind in ("searched", "uniform subnet", "uniform PTQ"):
        red, red8, change = [], [], []
        for s in SEEDS:
            part = df[(df["seed"] == s) & (df["kind"] == kind)]
            ok = part[part["val_accuracy"] >= val_fp32[s] - 0.01]
            if len(ok):
                best = ok.loc[ok["pct"].idxmin()]
                red.append(100 - best["pct"])
                red8.append(100 * (1 - best["pct"] / w8a8))
                change.append(best["accuracy"] - fp32_test[s])
        lines.append(f"| {kind} ({len(red)} of {len(SEEDS)} seeds qualify) | {_ms(red, 1)} | "
                     f"{_ms(red8, 1)} | {_ms(change, 100, 2)} |")
    lines += ["", f"Search time (cached evaluations reused when present): "
              f"{', '.join(f'seed {s}: {t:.1f} s' for s, t in t_search.items())}.", ""]
    return lines, df


def cost_section(data) -> list[str]:
    base = craftlab.load_checkpoint(craftlab.get_run(study.notebook_specs((0,))["per-bit/s0"].base_run(),
                                                     progress=False))
    lines = ["**Training cost on vit-tiny** (one epoch of the sandwich rule, 17 steps of batch 64, 4 subnets per step, "
             "seed 0; memory of the first step: saved tensors peak + gradients + AdamW state)", "",
             "| variant | s / epoch | trainable params | saved (MB) | grads (MB) | AdamW (MB) | total (MB) |",
             "|---|---|---|---|---|---|---|"]
    for lora in ("per-bit", "shared", None):
        sn = build_supernet(base, data.calib, lora=lora)
        t0 = time.perf_counter()
        res = train_supernet(sn, data, epochs=1, evaluate_every_epoch=False)
        wall = time.perf_counter() - t0
        m = res.memory
        lines.append(f"| {lora or 'full weights'} | {wall:.1f} | {m.trainable_params:,} | "
                     f"{m.saved_bytes / 2**20:.1f} | {m.grad_bytes / 2**20:.2f} | {m.optimizer_bytes / 2**20:.2f} | "
                     f"{m.total_bytes / 2**20:.1f} |")
    t0 = time.perf_counter()
    vitb = study.standin_memory(use_cache=False)
    wall = time.perf_counter() - t0
    lines += ["", f"**ViT-B-sized stand-in** (timm vit_base_patch16_224, random init, 224 px, batch 2, one sandwich "
              f"step with the largest and smallest subnets; {wall:.0f} s for the three)", "",
              "| variant | trainable params | saved (MB) | grads (MB) | AdamW (MB) | total (MB) |",
              "|---|---|---|---|---|---|"]
    for mode, m in vitb.items():
        lines.append(f"| {'full weights' if mode == 'none' else mode} | {m['trainable_params']:,} | "
                     f"{m['saved_bytes'] / 2**20:.0f} | {m['grad_bytes'] / 2**20:.0f} | "
                     f"{m['optimizer_bytes'] / 2**20:.0f} | {m['total_bytes'] / 2**20:.0f} |")
    sn = load_supernet(get_supernet(study.notebook_specs((0,))["per-bit/s0"]))
    t0 = time.perf_counter()
    rep = search_budgets(sn, data, list(study.BUDGETS), cache=False, **study.SEARCH)
    lines += ["", f"**Search time, uncached**: {time.perf_counter() - t0:.1f} s for {len(study.BUDGETS)} budgets "
              f"({len(rep.points)} distinct subnets evaluated on {len(data.val_set)} validation images).", ""]
    return lines


def main() -> None:
    data = craftlab.load_data("digits")
    t0 = time.perf_counter()
    for spec in study.notebook_specs(SEEDS).values():  # trains what the cache lacks
        get_supernet(spec)
    prep = time.perf_counter() - t0
    lines, df = pareto_section(data)
    lines += cost_section(data)
    lines.append(f"(Supernets fetched from the cache in {prep:.0f} s; a missing one is trained on the way.)")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "supernet.md").write_text(text + "\n")
    df.to_csv(RESULTS / "supernet.csv", index=False)


if __name__ == "__main__":
    main()
