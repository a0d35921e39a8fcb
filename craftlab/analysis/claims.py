"""The claim check of a notebook: paired gains per compression setting and a verdict in words, computed
with :mod:`craftlab.analysis.stats` (paired t test by seed, Holm across the settings of the claim, effect
sizes with confidence intervals, a power statement)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import stats

# ----------------------------------------------------------------------------------------------
# the claim check (statistics: craftlab.analysis.stats)

CLAIM = "fine-tuning with SAM makes the model lose less accuracy under post-training compression"
CHANGE = "accuracy change under compression"
"""The value the claim check tests: compressed − FP32 accuracy, so treatment − baseline = the drop reduction."""


def paired_gains(df: pd.DataFrame, baseline: str, treatment: str, settings: Sequence[str] | None = None,
                 n_test: int | None = None, *, test: str = "t", correction: str = "holm",
                 alpha: float = 0.05) -> pd.DataFrame:
    """Treatment vs baseline, setting by setting, paired by seed, one test per setting, corrected across them.

    The tested value is each run's accuracy change under compression (compressed − FP32 accuracy), so the
    paired difference treatment − baseline is the **drop reduction** (baseline drop − treatment drop, > 0 =
    the treatment loses less). Per setting (the `settings` of the claim, fixed beforehand; default: all):
    the :func:`craftlab.analysis.stats.compare_arms` columns (``n``, ``mean_diff`` = ``drop_reduction`` with
    its ``ci_low``/``ci_high`` at 1 − α, ``sd_diff``, ``effect_size`` d_z, ``p``, ``p_adjusted`` (Holm by
    default), ``significant``, ``direction``) and, over the same seeds, mean FP32 accuracy (``fp_*``),
    compressed accuracy (``acc_*``) and drop (``drop_*``) of both arms, ``gain`` (compressed accuracy,
    treatment − baseline), ``wins``/``losses`` (seeds where the treatment loses less / more) and ``verdict``:
    supports / contradicts (significant after correction), no damage (neither arm loses more than one test
    image on average) or inconclusive.

    ``table.attrs``: those of ``compare_arms`` plus ``one_image`` (1 / test-set size) and ``per_seed``
    (seed -> mean drop reduction over the settings that cost accuracy: descriptive, not a further test).

    >>> table = paired_gains(df, "AdamW", "SAM ρ=0.05", settings=["wanda 70%", "W4A4"])  # doctest: +SKIP
    """
    for arm in (baseline, treatment):
        if arm not in set(df["arm"]):
            raise ValueError(f"arm {arm!r} not in the table; have {sorted(set(df['arm']))}")
    if n_test is None and "n_test" in df.columns:
        n_test = int(df["n_test"].iloc[0])
    one_image = 1.0 / n_test if n_test else 0.0
    order = list(dict.fromkeys(df["setting"])) if settings is None else list(settings)
    missing = [s for s in order if s not in set(df["setting"])]
    if missing:
        raise ValueError(f"setting(s) {missing} not in the table; have {list(dict.fromkeys(df['setting']))}")
    part = df[df["setting"].isin(order) & df["arm"].isin([baseline, treatment])]
    part = part.assign(**{CHANGE: -part["accuracy_drop"]}).sort_values("setting", key=lambda s: s.map(order.index),
                                                                      kind="stable")
    table = stats.compare_arms(part, baseline, treatment, value=CHANGE, test=test, correction=correction,
                               alpha=alpha)
    wide = part.pivot_table(index=["setting", "seed"], columns="arm", values=["fp_accuracy", "accuracy",
                                                                              "accuracy_drop"]).dropna()
    rows, per_seed = [], {}
    for r in table.to_dict("records"):
        if r["n"] == 0:
            raise ValueError(f"{baseline!r} and {treatment!r} share no seed for {r['setting']!r}")
        w = wide.loc[r["setting"]]
        red = (w[("accuracy_drop", baseline)] - w[("accuracy_drop", treatment)]).to_numpy(float)
        row = {f"{col}_{role}": float(w[(key, arm)].mean())
               for key, col in (("fp_accuracy", "fp"), ("accuracy", "acc"), ("accuracy_drop", "drop"))
               for role, arm in (("baseline", baseline), ("treatment", treatment))}
        row.update(gain=float((w[("accuracy", treatment)] - w[("accuracy", baseline)]).mean()),
                   drop_reduction=r["mean_diff"], wins=int((red > 0).sum()), losses=int((red < 0).sum()))
        damaged = max(row["drop_baseline"], row["drop_treatment"]) > one_image
        row["verdict"] = ("supports" if r["significant"] and r["direction"] == "gain" else
                          "contradicts" if r["significant"] and r["direction"] == "harm" else
                          "inconclusive" if damaged else "no damage")
        if damaged:
            for seed, v in zip(w.index, red):
                per_seed.setdefault(int(seed), []).append(float(v))
        rows.append(row)
    out = pd.concat([table, pd.DataFrame(rows)], axis=1)
    out.attrs.update(table.attrs, one_image=one_image,
                     per_seed={s: float(np.mean(v)) for s, v in sorted(per_seed.items())})
    return out


def verdict(table: pd.DataFrame, claim: str = CLAIM, alpha: float | None = None) -> stats.Verdict:
    """The claim's :class:`~craftlab.analysis.stats.Verdict` from a :func:`paired_gains` table: ``status``
    (supports / partly supports / contradicts / mixed / inconclusive), the settings with a significant gain
    and harm after correction, and ``text`` (numbers in percentage points, with a power statement).

    >>> verdict(paired_gains(df, "AdamW", "SAM ρ=0.05")).status  # doctest: +SKIP
    'partly supports'
    """
    return stats.claim_verdict(table, claim=claim, alpha=alpha, scale=100.0, unit=" pp")


def claim_report(table: pd.DataFrame, claim: str = CLAIM, alpha: float | None = None) -> str:
    """Sentences summarising :func:`paired_gains`: one line per setting (drop reduction with its CI, d_z,
    corrected p), the FP32 accuracies, the mean over seeds, and :func:`verdict`'s text. Every number and
    every word of the verdict is computed from `table`.

    >>> print(claim_report(paired_gains(df, "AdamW", "SAM ρ=0.05")))  # doctest: +SKIP
    """
    b, t = table.attrs.get("baseline", "baseline"), table.attrs.get("treatment", "treatment")
    v = verdict(table, claim=claim, alpha=alpha)
    head_lines = v.text.split("\n")
    pp = lambda x: f"{100 * x:+.1f}" if math.isfinite(x) else "n/a"
    pct = round(100 * (1 - float(table.attrs.get("alpha", 0.05))))  # the CIs are at the table's α
    lines = head_lines[:2] + [f"Accuracies in %, drops and drop reductions ({b} drop − {t} drop) in percentage "
                              "points (pp); p_adj: corrected p-value.", ""]
    width = max(len(s) for s in table["setting"])
    ci_head = f"drop reduction [{pct}% CI]"
    head = (f"  {'setting':<{width}}  {'accuracy':>15}  {'drop':>13}  {ci_head:>26}  {'d_z':>5}  {'p_adj':>7}"
            "  wins  verdict")
    lines += [head, "  " + "-" * (len(head) - 2)]
    for r in table.to_dict("records"):
        ci = f"{pp(r['drop_reduction'])} [{pp(r['ci_low'])}, {pp(r['ci_high'])}]"
        dz = f"{r['effect_size']:+5.1f}" if math.isfinite(r["effect_size"]) else "  n/a"
        p_adj = f"{r['p_adjusted']:7.2g}" if math.isfinite(r["p_adjusted"]) else "    n/a"
        lines.append(f"  {r['setting']:<{width}}  {100 * r['acc_baseline']:5.1f} -> {100 * r['acc_treatment']:5.1f}"
                     f"  {100 * r['drop_baseline']:4.1f} -> {100 * r['drop_treatment']:4.1f}  {ci:>26}  {dz}"
                     f"  {p_adj}  {r['wins']}/{r['n']}   {r['verdict']}")
    lines.append("")
    fp_b, fp_t = float(table["fp_baseline"].iloc[0]), float(table["fp_treatment"].iloc[0])
    lines.append(f"Uncompressed (FP32) accuracy: {b} {100 * fp_b:.1f}%, {t} {100 * fp_t:.1f}% "
                 f"({pp(fp_t - fp_b)} pp).")
    quiet = list(table.loc[table["verdict"] == "no damage", "setting"])
    if quiet:
        lines.append(f"No damage (neither arm loses more than one test image, {100 * table.attrs['one_image']:.2f} "
                     f"pp, on average): {', '.join(quiet)}; the claim has nothing to show there.")
    per_seed = table.attrs.get("per_seed", {})
    if len(per_seed) > 1:
        mean, low, high = stats.mean_ci(list(per_seed.values()), pct / 100)
        lines.append(f"Mean over the settings that cost accuracy (descriptive, not a further test): drop reduction "
                     f"{pp(mean)} pp [{pct}% CI {pp(low)}, {pp(high)}] over seeds; per seed "
                     + ", ".join(f"{s}: {pp(x)}" for s, x in per_seed.items()) + ".")
    return "\n".join(lines + head_lines[2:])
