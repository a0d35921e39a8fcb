"""Benchmark 2: the CrAFT table on the embedded default, read with paired, corrected statistics.

For vit-tiny and resnet-tiny (mnist5k-pretrained, fine-tuned on digits), 5 seeds, arms AdamW,
AdamW+SAM (rho 0.05, 0.1) and AdamW+ASAM (rho 0.5), all on the same schedule and seeds: FP accuracy and
accuracy after magnitude / Wanda pruning (50/70/90 %, 2:4) — for resnet-tiny also with BatchNorm
re-estimated on the calibration set after pruning (``+BN``) — and PTQ (W8A8, W6A6, W4A8, W4A4, W3A8);
mean ± std over seeds, fine-tuning time, and for every SAM/ASAM arm the paired difference to AdamW per
setting (same seed), paired t-test, Holm-corrected across the settings of that (model, arm) claim.

Run: ``python -m benchmarks.bench_craft`` (writes benchmarks/results/craft.csv and prints markdown).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

import craftlab
from craftlab.analysis.stats import claim_verdict, compare_arms
from craftlab.distributed.sweep import settings_grid

RESULTS = Path(__file__).parent / "results"
ARMS = {"AdamW": (0.0, False), "SAM 0.05": (0.05, False), "SAM 0.1": (0.1, False), "ASAM 0.5": (0.5, True)}
BASELINE = "AdamW"
MODELS = ("vit-tiny", "resnet-tiny")
SEEDS = (0, 1, 2, 3, 4)
EPOCHS = 8
ALPHA = 0.05


def settings_for(name: str) -> list:
    grid = settings_grid()
    if name == "resnet-tiny":  # BatchNorm re-estimation after pruning and quantization (vit-tiny has no BatchNorm)
        grid += [s for s in settings_grid(recalibrate_bn=True) if s.recalibrate_bn]
    return grid


def run(models=MODELS, seeds=SEEDS, arms=ARMS, epochs=EPOCHS) -> pd.DataFrame:
    frames = []
    for name in models:
        data = craftlab.load_data("digits", model=craftlab.build_model(name))
        settings = settings_for(name)
        for seed in seeds:
            base = craftlab.create_model(name, num_classes=10, seed=seed)
            for arm, (rho, adaptive) in arms.items():
                t0 = time.perf_counter()
                res = craftlab.finetune(base, data, epochs=epochs, sam_rho=rho, adaptive=adaptive, seed=seed,
                                        progress=False)
                wall = time.perf_counter() - t0
                df = craftlab.sweep({arm: res.model}, data, settings, progress=False)
                df["arch"], df["arm"], df["seed"], df["train_time_s"] = name, arm, seed, wall
                frames.append(df)
                print(f"  {name} seed {seed} {arm}: FP {df.accuracy.iloc[0]:.3f} ({wall:.0f}s)", file=sys.stderr,
                      flush=True)
    return pd.concat(frames, ignore_index=True)


def table(df: pd.DataFrame) -> str:
    """Markdown: rows = setting, columns = arm, cells = mean ± std accuracy (%) over seeds; one table per model."""
    lines = []
    for arch, part in df.groupby("arch", sort=False):
        g = part.groupby(["setting", "arm"], sort=False)["accuracy"].agg(["mean", "std"]) * 100
        arms = list(dict.fromkeys(part["arm"]))
        lines += [f"**{arch}** (test accuracy %, mean ± std over {part['seed'].nunique()} seeds)", "",
                  "| setting | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for setting in dict.fromkeys(part["setting"]):
            cells = [f"{g.loc[(setting, a), 'mean']:.1f} ± {g.loc[(setting, a), 'std']:.1f}" for a in arms]
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        t = part.groupby("arm", sort=False)["train_time_s"].agg(["mean", "std"])
        lines.append("| fine-tuning time (s) | " + " | ".join(f"{t.loc[a, 'mean']:.1f} ± {t.loc[a, 'std']:.1f}"
                                                          for a in arms) + " |")
        lines.append("")
    return "\n".join(lines)


def paired(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Per (model, arm): paired differences to AdamW by seed over the compressed settings, Holm within the family."""
    lines, frames = [], []
    for arch, part in df.groupby("arch", sort=False):
        compressed = part[part["setting"] != "FP32"]
        n_test = 359
        lines += [f"**{arch}**: arm − {BASELINE}, accuracy points, paired by seed (n = {part['seed'].nunique()}), "
                  f"paired t-test, Holm across the {compressed['setting'].nunique()} compressed settings of each arm; "
                  f"one test image = {100 / n_test:.2f} pts. Bold: survives correction.", "",
                  "| setting | " + " | ".join(a for a in ARMS if a != BASELINE) + " |",
                  "|---|" + "---|" * (len(ARMS) - 1)]
        cols = {}
        for arm in ARMS:
            if arm == BASELINE:
                continue
            cmp = compare_arms(compressed, BASELINE, arm, value="accuracy", test="t", correction="holm", alpha=ALPHA)
            cmp["arch"], cmp["arm"] = arch, arm
            frames.append(cmp)
            cols[arm] = cmp.set_index("setting")
            v = claim_verdict(cmp, claim=f"{arm} loses less accuracy under compression than {BASELINE} ({arch})",
                              alpha=ALPHA, scale=100, unit=" pts")
            cols[arm].attrs["verdict"] = v
        for setting in dict.fromkeys(compressed["setting"]):
            cells = []
            for c in cols.values():
                r = c.loc[setting]
                text = (f"{100 * r['mean_diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] "
                        f"dz {r['effect_size']:+.1f} p {r['p_adjusted']:.2g}")
                cells.append(f"**{text}**" if r["significant"] else text)
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
        for arm, c in cols.items():
            lines.append(f"- {arm}: {c.attrs['verdict'].text}")
        lines.append("")
    return "\n".join(lines), pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """``--from-csv``: re-read benchmarks/results/craft.csv instead of re-training (to re-print the analysis)."""
    t0 = time.perf_counter()
    if argv and "--from-csv" in argv:
        df = pd.read_csv(RESULTS / "craft.csv")
    else:
        df = run()
        RESULTS.mkdir(exist_ok=True)
        df.to_csv(RESULTS / "craft.csv", index=False)
    text, stats = paired(df)
    stats.to_csv(RESULTS / "craft_paired.csv", index=False)
    print(table(df))
    print(text)
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")
    return df


if __name__ == "__main__":
    main(sys.argv[1:])
