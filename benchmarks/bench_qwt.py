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
import torch

import craftlab
from craftlab import settings
from craftlab.analysis.stats import claim_verdict, compare_arms

RESULTS = Path(__file__).parent / "results"
MODELS = ("vit-tiny", "resnet-tiny")
ARMS = {"AdamW": 0.0, "SAM 0.05": 0.05}
SEEDS = (0, 1, 2, 3, 4)
EPOCHS = 8
BITS = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 4))
SPARSITIES = (0.5, 0.7)
METHODS = ("PTQ", "+QwT", "+QwT-v2")  # the uncompensated model, then the two compensations
ALPHA = 0.05
N_TEST = 359


def _recipes(model: torch.nn.Module) -> tuple[str, ...]:
    """Every registered quantization recipe that can quantize `model` (the registry's; repq: timm ViTs only)."""
    from craftlab.compression.pipeline import check_recipe_model

    def fits(recipe: str) -> bool:
        try:
            check_recipe_model(model, recipe)
            return True
        except ValueError:
            return False

    return tuple(r for r in settings.RECIPES if fits(r))


def _latency(base: torch.nn.Module, comp: torch.nn.Module, x: torch.Tensor, repeats: int = 25) -> tuple[float, float]:
    """Median seconds per forward of `base` and `comp` on `x`, measured alternately (drift hits both)."""
    tb, tc = [], []
    with torch.inference_mode():
        for m in (base, comp):
            m(x)  # warm-up
        for _ in range(repeats):
            for m, store in ((base, tb), (comp, tc)):
                t = time.perf_counter()
                m(x)
                store.append(time.perf_counter() - t)
    return sorted(tb)[repeats // 2], sorted(tc)[repeats // 2]


def _row(setting: str, family: str, method: str, model: torch.nn.Module, data, fp_params: int, fp_macs: int,
         x1: torch.Tensor, **extra) -> dict:
    stats = craftlab.model_stats(model, x1)
    return {"setting": setting, "family": family, "method": method,
            "accuracy": craftlab.evaluate(model, data.test)["accuracy"],
            "params_added_pct": 100 * (stats["params"] - fp_params) / fp_params,
            "macs_added_pct": 100 * (stats["macs"] - fp_macs) / fp_macs, **extra}


def _compensated(q, ref, data, setting, family, fp_params, fp_macs, x1, latency_x=None, methods=None) -> list[dict]:
    rows = [_row(setting, family, "PTQ" if family != "prune" else "plain", q, data, fp_params, fp_macs, x1)]
    if methods is None:
        methods = (("+QwT", "qwt"), ("+QwT-v2", "qwt-v2")) if family != "prune" else (("+CWAC", "qwt-v2"),)
    for label, method in methods:
        res = craftlab.compensate(q, ref, data.calib, method=method, fold=method == "qwt-v2")
        extra = {"fit_s": res.summary["fit_seconds"], "blocks_compensated": res.summary["compensated"],
                 "blocks_fitted": res.summary["fitted"]}
        if latency_x is not None:
            tb, tc = _latency(q, res.model, latency_x)
            extra["latency_overhead_pct"] = 100 * (tc - tb) / tb
        rows.append(_row(setting, family, label, res.model, data, fp_params, fp_macs, x1, **extra))
    return rows


def run(models=MODELS, arms=ARMS, seeds=SEEDS, epochs=EPOCHS, bits=BITS, sparsities=SPARSITIES) -> pd.DataFrame:
    rows = []
    for name in models:
        data = craftlab.load_data("digits", model=craftlab.build_model(name))
        x_lat = torch.cat([x for x, _ in data.test])[:128]
        for arm, rho in arms.items():
            for seed in seeds:
                t0 = time.perf_counter()
                spec = craftlab.RunSpec(model=name, data="digits", epochs=epochs, sam_rho=rho, seed=seed)
                ref = craftlab.load_checkpoint(craftlab.get_run(spec, progress=False)).eval()
                x1 = x_lat[:1]
                fp = craftlab.model_stats(ref, x1)
                base = {"model": name, "arm": arm, "seed": seed}
                out = [{"setting": "FP32", "family": "fp", "method": "FP",
                        "accuracy": craftlab.evaluate(ref, data.test)["accuracy"]}]
                for recipe in _recipes(ref):
                    for w, a in bits:
                        q = craftlab.quantize(ref, w, a, calib=data.calib, recipe=recipe)
                        setting = settings.make_setting("none", 0, w, a, recipe=recipe).label()
                        timed = x_lat if (seed == seeds[0] and arm == next(iter(arms)) and (w, a) == (4, 4)) else None
                        out += _compensated(q, ref, data, setting, recipe, fp["params"], fp["macs"], x1, timed)
                for s in sparsities:
                    for bn in ((False, True) if name.startswith("resnet") else (False,)):
                        pruned = craftlab.prune(ref, s, method="magnitude", calib=data.calib, recalibrate_bn=bn)
                        setting = f"magnitude {s:.0%}" + (" +BN" if bn else "")
                        out += _compensated(pruned, ref, data, setting, "prune", fp["params"], fp["macs"], x1,
                                            methods=() if bn else None)
                rows += [{**base, **r} for r in out]
                acc = {(r["setting"], r["method"]): r["accuracy"] for r in out}
                print(f"  {name} {arm} seed {seed}: FP {acc[('FP32', 'FP')]:.3f}, W4A4 {acc[('W4A4', 'PTQ')]:.3f} "
                      f"-> QwT {acc[('W4A4', '+QwT')]:.3f} / QwT-v2 {acc[('W4A4', '+QwT-v2')]:.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


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
    """Each compensation vs its uncompensated model, paired by seed; Holm within each model × arm × method."""
    lines = ["Paired gain of each compensation over the same compressed model (accuracy points, mean [95% CI], "
             "p after Holm across the settings of its model × arm family; bold: significant at α = 0.05).", ""]
    frames, verdicts = [], []
    comp = df[df["family"] != "fp"].copy()
    comp["base"] = comp["method"].isin(["PTQ", "plain"])
    for (name, arm), part in comp.groupby(["model", "arm"], sort=False):
        for treat in ("+QwT", "+QwT-v2", "+CWAC"):
            sub = part[part["base"] | (part["method"] == treat)].copy()
            settings = sub.loc[sub["method"] == treat, "setting"].unique()
            sub = sub[sub["setting"].isin(settings)]
            if sub.empty:
                continue
            sub["arm_"] = sub["method"].where(~sub["base"], "base")
            cmp = compare_arms(sub, "base", treat, arm="arm_", value="accuracy", test="t", correction="holm",
                               alpha=ALPHA)
            cmp["model"], cmp["arm"], cmp["method"] = name, arm, treat
            frames.append(cmp)
            if treat != "+CWAC":
                verdicts.append(f"- {name} {arm} {treat}: " + claim_verdict(
                    cmp, claim=f"{treat[1:]} raises the accuracy of the quantized {name} ({arm} arm)", alpha=ALPHA,
                    scale=100, unit=" pts").text.split("\n")[2])
    table = pd.concat(frames, ignore_index=True)
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
    """Does compensation add as much on the SAM arm as on the AdamW arm? gain(SAM) − gain(AdamW), paired by seed."""
    arms = list(ARMS)
    comp = df[df["family"] != "fp"]
    base = comp[comp["method"].isin(["PTQ", "plain"])].set_index(["model", "arm", "seed", "setting"])["accuracy"]
    lines = [f"CrAFT × compensation: the gain of each compensation on the {arms[1]} arm minus its gain on the "
             f"{arms[0]} arm (accuracy points, paired by seed, Holm across settings within each model × method). "
             "Positive: compensation adds more on top of SAM; negative: flatness already removed part of what it "
             "fixes.",
             "", "| model | method | setting | gain AdamW | gain SAM | SAM − AdamW [95% CI] | p_adj |",
             "|---|---|---|---|---|---|---|"]
    for (name, method), part in comp[~comp["method"].isin(["PTQ", "plain"])].groupby(["model", "method"], sort=False):
        g = part.set_index(["model", "arm", "seed", "setting"])["accuracy"] - base
        gains = g.dropna().reset_index().rename(columns={"accuracy": "gain"})
        cmp = compare_arms(gains, arms[0], arms[1], value="gain", test="t", correction="holm", alpha=ALPHA)
        for _, r in cmp.iterrows():
            text = f"{100 * r.mean_diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
            lines.append(f"| {name} | {method} | {r.setting} | {100 * r.baseline_mean:+.1f} | "
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
