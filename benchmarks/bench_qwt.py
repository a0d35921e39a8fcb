"""Benchmark: QwT and QwT-v2 (CWAC, folded) on top of PTQ and pruning, on the embedded default.

For vit-tiny and resnet-tiny (mnist5k-pretrained, fine-tuned on digits with AdamW and with AdamW+SAM
ρ=0.05 on the same schedule and seeds, cached by :func:`craftlab.get_run`), 5 seeds: test accuracy after

* PTQ at W8A8, W6A6, W4A8, W4A4, W3A4 (recipe ``uniform``; for vit-tiny also ``repq``, RepQ-ViT-style),
  plain, + QwT (per-block linear side path) and + QwT-v2 (channel-wise affine, folded into the layers);
* magnitude pruning 50 / 70 %, plain and + CWAC (QwT-v2's closed form on the pruning error, folded:
  sparsity unchanged); for resnet-tiny also with BatchNorm re-estimated instead (``+BN``, the other fix of
  the same error: ``craftlab.compress`` refuses BN re-estimation + compensation of a pruned-only model).

Every compensation is fitted on the 128-image calibration split against the uncompressed model (the
official QwT code uses 512 images). Reported: mean ± std over seeds; the paired gain of each compensation
over its uncompensated model (paired by seed, t test, Holm across the settings of each model × arm ×
method family, :func:`craftlab.analysis.stats.compare_arms`); whether compensation adds the same on the
SAM arm as on the AdamW arm (the gain difference, paired by seed, Holm within each model × method);
parameters and MACs added (% of the model), CPU latency overhead (% of the uncompensated fake-quantized
model, batch of 128, median of interleaved repeats, seed 0 AdamW, W4A4) and fitting time.

Run: ``python -m benchmarks.bench_qwt`` (writes benchmarks/results/qwt.csv and prints markdown).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from craftlab.studies import qwt as study

RESULTS = Path(__file__).parent / "results"
MODELS, ARMS, SEEDS, EPOCHS = study.MODELS, study.ARMS, study.SEEDS, study.EPOCHS
BITS, SPARSITIES, METHODS, ALPHA = study.BITS, study.SPARSITIES, study.METHODS, study.ALPHA
N_TEST = 359


def run(models=MODELS, arms=ARMS, seeds=SEEDS, epochs=EPOCHS, bits=BITS, sparsities=SPARSITIES) -> pd.DataFrame:
    """The study's rows (:func:`craftlab.studies.qwt.bench_table`), one line per run on stderr."""
    return study.bench_table(models, arms, seeds, epochs, bits, sparsities, log=sys.stderr)


def _ms(v: pd.Series) -> str:
    return f"{100 * v.mean():.1f} ± {100 * v.std():.1f}"


def accuracy_tables(df: pd.DataFrame) -> str:
    lines = []
    for name, part in df.groupby("model", sort=False):
        arms = list(dict.fromkeys(part["arm"]))
        fp = part[part["method"] == "FP"].groupby("arm", sort=False)["accuracy"]
        lines += [f"**{name}**: test accuracy %, mean ± std over {part['seed'].nunique()} seeds "
                  f"(FP32: " + ", ".join(f"{a} {_ms(v)}" for a, v in fp) + f"; one test image = "
                  f"{100 / N_TEST:.2f} pts)", ""]
        for family in ("uniform", "repq", "prune"):
            sub = part[part["family"] == family]
            if sub.empty:
                continue
            methods = list(dict.fromkeys(sub["method"]))
            head = [f"{a} {m}" for a in arms for m in methods]
            lines += ["| setting | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
            g = dict(list(sub.groupby(["setting", "arm", "method"], sort=False)["accuracy"]))
            for setting in dict.fromkeys(sub["setting"]):
                lines.append(f"| {setting} | " + " | ".join(_ms(g[(setting, a, m)]) if (setting, a, m) in g else "–"
                                                           for a in arms for m in methods) + " |")
            lines.append("")
    return "\n".join(lines)


def paired_gains(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Each compensation vs its uncompensated model, paired by seed; Holm within each model × arm × method
    (:func:`craftlab.studies.qwt.paired_gains`), as markdown."""
    lines = ["Paired gain of each compensation over the same compressed model (accuracy points, mean [95% CI], "
             "p after Holm across the settings of its model × arm family; bold: significant at α = 0.05).", ""]
    table, verdicts = study.paired_gains(df, alpha=ALPHA)
    cols = list(dict.fromkeys(zip(table["arm"], table["method"])))
    for name, part in table.groupby("model", sort=False):
        lines += [f"**{name}**", "", "| setting | " + " | ".join(f"{a} {m}" for a, m in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for setting in dict.fromkeys(part["setting"]):
            cells = []
            for a, m in cols:
                r = part[(part["setting"] == setting) & (part["arm"] == a) & (part["method"] == m)]
                if r.empty:
                    cells.append("")
                    continue
                r = r.iloc[0]
                text = f"{100 * r.mean_diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}] p {r.p_adjusted:.2g}"
                cells.append(f"**{text}**" if r.significant else text)
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines + ["Verdicts (paired t, Holm within each family):", *verdicts, ""]), table


def interaction(df: pd.DataFrame) -> str:
    """Does compensation add as much on the SAM arm as on the AdamW arm? gain(SAM) − gain(AdamW), paired by seed
    (:func:`craftlab.studies.qwt.interaction`), as markdown."""
    arms = list(ARMS)
    lines = [f"CrAFT × compensation: the gain of each compensation on the {arms[1]} arm minus its gain on the "
             f"{arms[0]} arm (accuracy points, paired by seed, Holm across settings within each model × method). "
             "Positive: compensation adds more on top of SAM; negative: flatness already removed part of what it "
             "fixes.",
             "", "| model | method | setting | gain AdamW | gain SAM | SAM − AdamW [95% CI] | p_adj |",
             "|---|---|---|---|---|---|---|"]
    for _, r in study.interaction(df, arms, alpha=ALPHA).iterrows():
        text = f"{100 * r.mean_diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
        lines.append(f"| {r.model} | {r.method} | {r.setting} | {100 * r.baseline_mean:+.1f} | "
                     f"{100 * r.treatment_mean:+.1f} | {'**' + text + '**' if r.significant else text} | "
                     f"{r.p_adjusted:.2g} |")
    return "\n".join(lines + [""])


def costs(df: pd.DataFrame) -> str:
    lines = ["Cost of compensation (parameters and MACs added: % of the FP model, at W4A4; CPU latency: % over the "
             "uncompensated fake-quantized model, batch 128, seed 0 AdamW, median of 25 interleaved runs; fitting "
             "time: mean seconds per compensate() call over every setting, 128 calibration images).", "",
             "| model | recipe | method | params added | MACs added | latency overhead | fit time (s) |",
             "|---|---|---|---|---|---|---|"]
    comp = df[df["method"].isin(["+QwT", "+QwT-v2", "+CWAC"])]
    for (name, family, method), part in comp.groupby(["model", "family", "method"], sort=False):
        w4 = part[part["setting"].str.startswith("W4A4")] if family != "prune" else part
        lat = w4["latency_overhead_pct"].dropna()
        lines.append(f"| {name} | {family} | {method} | {w4['params_added_pct'].mean():.2f} % | "
                     f"{w4['macs_added_pct'].mean():.2f} % | {f'{lat.mean():+.1f} %' if len(lat) else '–'} | "
                     f"{part['fit_s'].mean():.2f} |")
    return "\n".join(lines + [""])


def shape(df: pd.DataFrame) -> str:
    """The QwT README's shape: large gains at W4A4, almost none at W6A6 (mean gain over seeds, points)."""
    comp = df[df["family"].isin(["uniform", "repq"])]
    piv = comp.pivot_table(index=["model", "arm", "family", "setting"], columns="method", values="accuracy")
    lines = ["Shape check (QwT README: RepQ-ViT W4A4 +0.2 to +7.8 pts with QwT, W6A6 +0.1 to +0.3): mean gain "
             "in points, W4A4 vs W6A6.", "", "| model | arm | recipe | W6A6 PTQ→+QwT / +QwT-v2 | "
             "W4A4 PTQ→+QwT / +QwT-v2 |", "|---|---|---|---|---|"]
    for (name, arm, family), part in piv.groupby(level=[0, 1, 2], sort=False):
        part = part.droplevel([0, 1, 2])
        cells = []
        for bits in ("W6A6", "W4A4"):
            key = bits if family == "uniform" else f"{bits} repq"
            r = part.loc[key]
            cells.append(f"{100 * r['PTQ']:.1f} → {100 * (r['+QwT'] - r['PTQ']):+.1f} / "
                         f"{100 * (r['+QwT-v2'] - r['PTQ']):+.1f}")
        lines.append(f"| {name} | {arm} | {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def main() -> pd.DataFrame:
    t0 = time.perf_counter()
    df = run()
    RESULTS.mkdir(exist_ok=True)
    df.to_csv(RESULTS / "qwt.csv", index=False)
    text, table = paired_gains(df)
    table.to_csv(RESULTS / "qwt_paired.csv", index=False)
    print(accuracy_tables(df))
    print(shape(df))
    print(text)
    print(interaction(df))
    print(costs(df))
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")
    return df


if __name__ == "__main__":
    main()
