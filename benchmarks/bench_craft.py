"""Benchmark 2: the CrAFT table on the embedded default.

For vit-tiny and resnet-tiny (mnist5k-pretrained, fine-tuned on digits), 3 seeds, arms AdamW,
AdamW+SAM (rho 0.05, 0.1) and AdamW+ASAM (rho 0.5), all on the same schedule: FP accuracy and
accuracy after magnitude / Wanda pruning (50/70/90 %, 2:4) and PTQ (W8A8, W6A6, W4A8, W4A4, W3A8),
mean ± std over seeds, plus fine-tuning time.

Run: ``python -m benchmarks.bench_craft`` (writes benchmarks/results/craft.csv and prints markdown).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

import craftlab
from craftlab.compression.sweep import setting_label

RESULTS = Path(__file__).parent / "results"
ARMS = {"AdamW": (0.0, False), "SAM 0.05": (0.05, False), "SAM 0.1": (0.1, False), "ASAM 0.5": (0.5, True)}
MODELS = ("vit-tiny", "resnet-tiny")
SEEDS = (0, 1, 2)
EPOCHS = 8


def run(models=MODELS, seeds=SEEDS, arms=ARMS, epochs=EPOCHS) -> pd.DataFrame:
    frames = []
    for name in models:
        probe = craftlab.create_model(name, pretrained=False)
        data = craftlab.load_data("digits", model=probe)
        for seed in seeds:
            base = craftlab.create_model(name, num_classes=10, seed=seed)
            for arm, (rho, adaptive) in arms.items():
                t0 = time.perf_counter()
                res = craftlab.finetune(base, data, epochs=epochs, sam_rho=rho, adaptive=adaptive, seed=seed,
                                        progress=False)
                wall = time.perf_counter() - t0
                df = craftlab.sweep({arm: res.model}, data, progress=False)
                df["arch"], df["arm"], df["seed"], df["train_time_s"] = name, arm, seed, wall
                frames.append(df)
                print(f"  {name} seed {seed} {arm}: FP {df.accuracy.iloc[0]:.3f} ({wall:.0f}s)", flush=True)
    out = pd.concat(frames, ignore_index=True)
    out["setting"] = out.apply(setting_label, axis=1)
    return out


def table(df: pd.DataFrame) -> str:
    """Markdown: rows = setting, columns = arm, cells = mean ± std accuracy (%) over seeds; one table per model."""
    lines = []
    for arch, part in df.groupby("arch", sort=False):
        g = part.groupby(["setting", "arm"], sort=False)["accuracy"].agg(["mean", "std"]) * 100
        arms = list(dict.fromkeys(part["arm"]))
        lines += [f"**{arch}** (test accuracy %, mean ± std over {part['seed'].nunique()} seeds)", "",
                  "| setting | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for setting in dict.fromkeys(part["setting"]):
            cells = []
            for arm in arms:
                m, s = g.loc[(setting, arm)]
                cells.append(f"{m:.1f} ± {s:.1f}")
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        t = part.groupby("arm", sort=False)["train_time_s"].agg(["mean", "std"])
        lines.append("| fine-tuning time (s) | " + " | ".join(f"{t.loc[a, 'mean']:.1f} ± {t.loc[a, 'std']:.1f}"
                                                          for a in arms) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> pd.DataFrame:
    t0 = time.perf_counter()
    df = run()
    RESULTS.mkdir(exist_ok=True)
    df.to_csv(RESULTS / "craft.csv", index=False)
    print(table(df))
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")
    return df


if __name__ == "__main__":
    main()
