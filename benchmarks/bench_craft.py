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

from craftlab.studies import craft as study

RESULTS = Path(__file__).parent / "results"
ARMS, BASELINE, MODELS = study.BENCH_ARMS, study.BENCH_BASELINE, study.BENCH_MODELS
SEEDS, EPOCHS, ALPHA = study.BENCH_SEEDS, study.BENCH_EPOCHS, study.BENCH_ALPHA
settings_for = study.bench_settings


def run(models=MODELS, seeds=SEEDS, arms=ARMS, epochs=EPOCHS) -> pd.DataFrame:
    """The study's table (:func:`craftlab.studies.craft.bench_table`), one line per run on stderr."""
    return study.bench_table(models, seeds, arms, epochs, log=sys.stderr)


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
    """Per (model, arm): paired differences to AdamW by seed over the compressed settings, Holm within the family
    (:func:`craftlab.studies.craft.bench_claims`), as markdown."""
    stats, verdicts = study.bench_claims(df, BASELINE, list(ARMS), ALPHA)
    lines = []
    for arch, part in df.groupby("arch", sort=False):
        compressed = part[part["setting"] != "FP32"]
        n_test = 359
        lines += [f"**{arch}**: arm − {BASELINE}, accuracy points, paired by seed (n = {part['seed'].nunique()}), "
                  f"paired t-test, Holm across the {compressed['setting'].nunique()} compressed settings of each arm; "
                  f"one test image = {100 / n_test:.2f} pts. Bold: survives correction.", "",
                  "| setting | " + " | ".join(a for a in ARMS if a != BASELINE) + " |",
                  "|---|" + "---|" * (len(ARMS) - 1)]
        cols = {arm: stats[(stats["arch"] == arch) & (stats["arm"] == arm)].set_index("setting")
                for arm in ARMS if arm != BASELINE}
        for setting in dict.fromkeys(compressed["setting"]):
            cells = []
            for c in cols.values():
                r = c.loc[setting]
                text = (f"{100 * r['mean_diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] "
                        f"dz {r['effect_size']:+.1f} p {r['p_adjusted']:.2g}")
                cells.append(f"**{text}**" if r["significant"] else text)
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
        for arm in cols:
            lines.append(f"- {arm}: {verdicts[(arch, arm)].text}")
        lines.append("")
    return "\n".join(lines), stats


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
