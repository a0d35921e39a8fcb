"""QwT / QwT-v2's study: compensation (QwT's per-block linear side path, QwT-v2's channel-wise affine CWAC,
folded) on top of PTQ and pruning, on fine-tuned runs of both CrAFT arms, and its claim checks through
:mod:`craftlab.analysis.stats` (paired by seed, Holm across the settings of a claim).

* the benchmark's grid (``benchmarks/bench_qwt.py``): :data:`MODELS` × :data:`ARMS` × :data:`SEEDS`, PTQ at
  :data:`BITS` (recipe ``uniform``, and ``repq`` for ViTs) and magnitude pruning at :data:`SPARSITIES`, each plain,
  + QwT and + QwT-v2 (:func:`bench_table`); the paired gain of each compensation (:func:`paired_gains`) and the
  CrAFT × compensation interaction (:func:`interaction`);
* notebook 03's table (two models, two arms, three seeds, W8A8/W6A6/W4A4 through :func:`craftlab.compress`
  labels: :func:`compress_rows`, or read from the benchmark's CSV: :func:`notebook_table`) and its three claim
  tables (:func:`qwt_claims`, :func:`v2_claims`, :func:`interaction_claims`), each row's verdict by one rule.

Example::

    df = bench_table(models=("vit-tiny",), seeds=(0,), bits=((4, 4),), sparsities=())
    table, verdicts = paired_gains(df)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..analysis.stats import claim_verdict, compare_arms
from ..settings import make_setting

__all__ = ["ALPHA", "ARMS", "BITS", "EPOCHS", "MARGIN", "METHODS", "MODELS", "NB_ARMS", "NB_BITS", "NB_METHODS",
           "NB_SEEDS", "RECIPE", "SEEDS", "SPARSITIES", "bench_table", "compress_rows", "interaction",
           "interaction_claims", "latency", "notebook_table", "paired_gains", "qwt_claims", "recipes_for",
           "v2_claims"]

# the benchmark's grid
MODELS = ("vit-tiny", "resnet-tiny")
ARMS: dict[str, float] = {"AdamW": 0.0, "SAM 0.05": 0.05}
"""The benchmark's arms: label -> SAM ρ (fine-tuning runs of :func:`craftlab.get_run`)."""
SEEDS = (0, 1, 2, 3, 4)
EPOCHS = 8
BITS = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 4))
SPARSITIES = (0.5, 0.7)
METHODS = ("PTQ", "+QwT", "+QwT-v2")  # the uncompensated model, then the two compensations
ALPHA = 0.05

# notebook 03's table
NB_ARMS: dict[str, dict[str, Any]] = {"AdamW": {}, "SAM ρ=0.05": {"sam_rho": 0.05}}
NB_SEEDS = (0, 1, 2)
NB_BITS = ("W8A8", "W6A6", "W4A4")
RECIPE = {"vit-tiny": " repq", "resnet-tiny": ""}
"""The quantization recipe per model, as a setting-label suffix (RepQ-ViT-style for the ViT)."""
NB_METHODS = {"PTQ": "", "+QwT": " + QwT", "+QwT-v2": " + QwT-v2"}
BENCH_TO_NB = {"AdamW": "AdamW", "SAM 0.05": "SAM ρ=0.05"}
"""The benchmark's arm labels -> the notebook's (the same runs)."""
MARGIN = 0.01
"""1 point: a gain "adds little" / two methods "match" within this."""


def recipes_for(model: nn.Module) -> tuple[str, ...]:
    """Every registered quantization recipe that can quantize `model` (the registry's: ``repq`` on timm ViTs only).

    >>> recipes_for(build_model("resnet-tiny"))  # doctest: +SKIP
    ('uniform',)
    """
    from .. import settings
    from ..compression.pipeline import check_recipe_model

    def fits(recipe: str) -> bool:
        try:
            check_recipe_model(model, recipe)
            return True
        except ValueError:
            return False

    return tuple(r for r in settings.RECIPES if fits(r))


def latency(base: nn.Module, comp: nn.Module, x: torch.Tensor, repeats: int = 25) -> tuple[float, float]:
    """Median seconds per forward of `base` and `comp` on `x`, measured alternately (drift hits both).

    >>> latency(q, compensated, x)  # doctest: +SKIP
    """
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


def _row(setting: str, family: str, method: str, model: nn.Module, data: Any, fp_params: int, fp_macs: int,
         x1: torch.Tensor, **extra: Any) -> dict:
    from ..compression.quant import model_stats
    from ..evaluation import evaluate

    stats = model_stats(model, x1)
    return {"setting": setting, "family": family, "method": method,
            "accuracy": evaluate(model, data.test)["accuracy"],
            "params_added_pct": 100 * (stats["params"] - fp_params) / fp_params,
            "macs_added_pct": 100 * (stats["macs"] - fp_macs) / fp_macs, **extra}


def _compensated(q: nn.Module, ref: nn.Module, data: Any, setting: str, family: str, fp_params: int, fp_macs: int,
                 x1: torch.Tensor, latency_x: torch.Tensor | None = None, methods: Any = None) -> list[dict]:
    from ..compression.compensate import compensate

    rows = [_row(setting, family, "PTQ" if family != "prune" else "plain", q, data, fp_params, fp_macs, x1)]
    if methods is None:
        methods = (("+QwT", "qwt"), ("+QwT-v2", "qwt-v2")) if family != "prune" else (("+CWAC", "qwt-v2"),)
    for label, method in methods:
        res = compensate(q, ref, data.calib, method=method, fold=method == "qwt-v2")
        extra = {"fit_s": res.summary["fit_seconds"], "blocks_compensated": res.summary["compensated"],
                 "blocks_fitted": res.summary["fitted"]}
        if latency_x is not None:
            tb, tc = latency(q, res.model, latency_x)
            extra["latency_overhead_pct"] = 100 * (tc - tb) / tb
        rows.append(_row(setting, family, label, res.model, data, fp_params, fp_macs, x1, **extra))
    return rows


def bench_table(models: Sequence[str] = MODELS, arms: Mapping[str, float] = ARMS, seeds: Sequence[int] = SEEDS,
                epochs: int = EPOCHS, bits: Sequence[tuple[int, int]] = BITS,
                sparsities: Sequence[float] = SPARSITIES, log: Any = None) -> pd.DataFrame:
    """The benchmark's rows: per (model, arm, seed) the FP32 accuracy, every recipe × bits plain / + QwT /
    + QwT-v2, and magnitude pruning plain / + CWAC (resnet-tiny also ``+BN``), with parameters and MACs added,
    fitting time and (seed 0, first arm, W4A4) the latency overhead. `log` (a file) gets one line per run.

    >>> df = bench_table(models=("vit-tiny",), seeds=(0,), bits=((4, 4),), sparsities=())  # doctest: +SKIP
    """
    from ..checkpoint import load_checkpoint
    from ..compression.pipeline import quantize
    from ..compression.prune import prune
    from ..compression.quant import model_stats
    from ..data import load_data
    from ..evaluation import evaluate
    from ..models import build_model
    from ..train.runs import RunSpec, get_run

    rows = []
    for name in models:
        data = load_data("digits", model=build_model(name))
        x_lat = torch.cat([x for x, _ in data.test])[:128]
        for arm, rho in arms.items():
            for seed in seeds:
                t0 = time.perf_counter()
                spec = RunSpec(model=name, data="digits", epochs=epochs, sam_rho=rho, seed=seed)
                ref = load_checkpoint(get_run(spec, progress=False)).eval()
                x1 = x_lat[:1]
                fp = model_stats(ref, x1)
                base = {"model": name, "arm": arm, "seed": seed}
                out = [{"setting": "FP32", "family": "fp", "method": "FP",
                        "accuracy": evaluate(ref, data.test)["accuracy"]}]
                for recipe in recipes_for(ref):
                    for w, a in bits:
                        q = quantize(ref, w, a, calib=data.calib, recipe=recipe)
                        setting = make_setting("none", 0, w, a, recipe=recipe).label()
                        timed = x_lat if (seed == seeds[0] and arm == next(iter(arms)) and (w, a) == (4, 4)) else None
                        out += _compensated(q, ref, data, setting, recipe, fp["params"], fp["macs"], x1, timed)
                for s in sparsities:
                    for bn in ((False, True) if name.startswith("resnet") else (False,)):
                        pruned = prune(ref, s, method="magnitude", calib=data.calib, recalibrate_bn=bn)
                        setting = f"magnitude {s:.0%}" + (" +BN" if bn else "")
                        out += _compensated(pruned, ref, data, setting, "prune", fp["params"], fp["macs"], x1,
                                            methods=() if bn else None)
                rows += [{**base, **r} for r in out]
                if log is not None and (4, 4) in bits:
                    acc = {(r["setting"], r["method"]): r["accuracy"] for r in out}
                    print(f"  {name} {arm} seed {seed}: FP {acc[('FP32', 'FP')]:.3f}, W4A4 {acc[('W4A4', 'PTQ')]:.3f} "
                          f"-> QwT {acc[('W4A4', '+QwT')]:.3f} / QwT-v2 {acc[('W4A4', '+QwT-v2')]:.3f} "
                          f"({time.perf_counter() - t0:.0f} s)", file=log, flush=True)
    return pd.DataFrame(rows)


def paired_gains(df: pd.DataFrame, alpha: float = ALPHA) -> tuple[pd.DataFrame, list[str]]:
    """Each compensation vs its uncompensated model, paired by seed, t test, Holm within each model × arm ×
    method (:func:`~craftlab.analysis.stats.compare_arms`); and a verdict line per model × arm × QwT / QwT-v2
    (:func:`~craftlab.analysis.stats.claim_verdict`). Returns (the table with ``model``, ``arm``, ``method``
    columns, the verdict lines).

    >>> table, verdicts = paired_gains(pd.read_csv("benchmarks/results/qwt.csv"))  # doctest: +SKIP
    """
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
                               alpha=alpha)
            cmp["model"], cmp["arm"], cmp["method"] = name, arm, treat
            frames.append(cmp)
            if treat != "+CWAC":
                verdicts.append(f"- {name} {arm} {treat}: " + claim_verdict(
                    cmp, claim=f"{treat[1:]} raises the accuracy of the quantized {name} ({arm} arm)", alpha=alpha,
                    scale=100, unit=" pts").text.split("\n")[2])
    return pd.concat(frames, ignore_index=True), verdicts


def interaction(df: pd.DataFrame, arms: Sequence[str] | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Does compensation add as much on the second arm (SAM) as on the first (AdamW)? Per model × method:
    gain(SAM) − gain(AdamW) by setting, paired by seed, t test, Holm across the settings; one row per
    (model, method, setting) with :func:`~craftlab.analysis.stats.compare_arms`'s columns.

    >>> interaction(pd.read_csv("benchmarks/results/qwt.csv"))  # doctest: +SKIP
    """
    arms = list(ARMS if arms is None else arms)
    comp = df[df["family"] != "fp"]
    base = comp[comp["method"].isin(["PTQ", "plain"])].set_index(["model", "arm", "seed", "setting"])["accuracy"]
    frames = []
    for (name, method), part in comp[~comp["method"].isin(["PTQ", "plain"])].groupby(["model", "method"], sort=False):
        g = part.set_index(["model", "arm", "seed", "setting"])["accuracy"] - base
        gains = g.dropna().reset_index().rename(columns={"accuracy": "gain"})
        cmp = compare_arms(gains, arms[0], arms[1], value="gain", test="t", correction="holm", alpha=alpha)
        cmp.insert(0, "method", method)
        cmp.insert(0, "model", name)
        frames.append(cmp)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# notebook 03: the table through craftlab.compress labels, and the three claim tables


def compress_rows(name: str, run: Mapping[str, Any], data: Any, bits: Sequence[str] = NB_BITS,
                  methods: Mapping[str, str] = NB_METHODS) -> list[dict]:
    """FP32, then every bits × method of one fine-tuned run (a row of :func:`craftlab.studies.craft.run_arms`)
    through :func:`craftlab.compress` labels (``"W4A4 repq + QwT-v2"``), evaluated on the test split.

    >>> rows = compress_rows("vit-tiny", runs.iloc[0], data, bits=("W4A4",))  # doctest: +SKIP
    """
    from ..compression.pipeline import compress
    from ..evaluation import evaluate
    from .craft import load_run

    model = load_run(run)
    key = {"model": name, "arm": run["arm"], "seed": run["seed"]}
    n0 = sum(p.numel() for p in model.parameters())
    rows = [{**key, "bits": "FP32", "method": "FP", "params_added": 0.0,
             "accuracy": evaluate(model, data.test)["accuracy"]}]
    for b in bits:
        for method, suffix in methods.items():
            m = compress(model, setting=b + RECIPE[name] + suffix, calib=data.calib)
            rows.append({**key, "bits": b, "method": method,
                         "params_added": sum(p.numel() for p in m.parameters()) / n0 - 1,
                         "accuracy": evaluate(m, data.test)["accuracy"]})
    return rows


def notebook_table(bench: pd.DataFrame, seeds: Sequence[int] = NB_SEEDS, bits: Sequence[str] = NB_BITS,
                   methods: Sequence[str] = tuple(NB_METHODS)) -> pd.DataFrame:
    """The notebook's table (``model, arm, seed, bits, method, params_added, accuracy``; the notebook's arm
    labels) from the benchmark's rows (``benchmarks/results/qwt.csv``): its recipe per model, `seeds`, `bits`.

    >>> table = notebook_table(pd.read_csv("benchmarks/results/qwt.csv"))  # doctest: +SKIP
    """
    bench = bench[bench["model"].isin(list(RECIPE)) & bench["seed"].isin(seeds) & bench["arm"].isin(list(BENCH_TO_NB))]
    bench = bench.assign(bits=bench["setting"].str.replace(" repq", "", regex=False),
                         arm=bench["arm"].map(BENCH_TO_NB), params_added=bench["params_added_pct"].fillna(0) / 100)
    recipe_ok = bench["setting"] == bench["bits"] + bench["model"].map(RECIPE)
    wanted = recipe_ok & bench["bits"].isin(bits) & bench["method"].isin(list(methods))
    table = bench[(bench["method"] == "FP") | wanted]
    return table[["model", "arm", "seed", "bits", "method", "params_added", "accuracy"]].reset_index(drop=True)


def _paired(df: pd.DataFrame, baseline: str, treatment: str, arm: str = "method",
            value: str = "accuracy") -> pd.DataFrame:
    cmp = compare_arms(df, baseline, treatment, arm=arm, value=value, by="bits", pair="seed")
    return cmp.set_index("setting")


def _n_images(n_test: int) -> str:
    return f"{n_test} test images, one image = {100 / n_test:.2f} pts"


def qwt_claims(table: pd.DataFrame, margin: float = MARGIN, n_test: int = 359) -> tuple[pd.DataFrame, str]:
    """QwT's claim (compensation recovers accuracy at W4A4 but adds little at W6A6), per model × arm × method:
    each compensation against the same quantized model, paired by seed, Holm across the bit settings. A row
    *holds* when the W4A4 gain is significant and the W6A6 gain is shown small (its 95 % CI's upper end below
    `margin`). Returns (the rows, the verdict sentence counted from them).

    >>> rows, verdict = qwt_claims(notebook_table(pd.read_csv("benchmarks/results/qwt.csv")))  # doctest: +SKIP
    """
    claim_rows = []
    for (name, arm, method), part in table[table["method"].isin(["+QwT", "+QwT-v2"])].groupby(
            ["model", "arm", "method"], sort=False):
        base = table[(table["model"] == name) & (table["arm"] == arm) & (table["method"] == "PTQ")]
        r = _paired(pd.concat([base, part]), "PTQ", method)
        w4_gain = bool(r.loc["W4A4", "significant"] and r.loc["W4A4", "direction"] == "gain")
        w6_small = bool(r.loc["W6A6", "ci_high"] < margin)
        verdict = ("holds" if w4_gain and w6_small else
                   "W4A4 gain not significant" + ("" if w6_small else "; W6A6 not shown small") if not w4_gain else
                   "W6A6 gain not shown < 1 pt")
        claim_rows.append({"model": name, "arm": arm, "method": method,
                           "W4A4 gain (pts)": 100 * r.loc["W4A4", "mean_diff"],
                           "W4A4 p_adj": r.loc["W4A4", "p_adjusted"],
                           "W6A6 gain (pts)": 100 * r.loc["W6A6", "mean_diff"],
                           "W6A6 CI high (pts)": 100 * r.loc["W6A6", "ci_high"], "verdict": verdict})
    claims = pd.DataFrame(claim_rows)
    held = int((claims["verdict"] == "holds").sum())
    text = (f"Verdict: holds in {held} of {len(claims)} model × arm × method rows "
            f"({'supported' if held == len(claims) else 'partly supported' if held else 'not supported'} on this "
            f"run; {table['seed'].nunique()} seeds, {_n_images(n_test)}).")
    return claims, text


def v2_claims(table: pd.DataFrame, margin: float = MARGIN) -> tuple[pd.DataFrame, str]:
    """QwT-v2's claim (CWAC matches or beats QwT with no extra parameters), per model × arm × bits: QwT-v2 minus
    QwT, paired by seed, Holm across the bit settings; *beats* / *worse*: a significant gain / loss, *matches*:
    the 95 % CI within ±`margin`, else *inconclusive*; beside it the parameters each adds. Returns (the rows, the
    verdict sentence).

    >>> rows, verdict = v2_claims(table)  # doctest: +SKIP
    """
    v2_rows = []
    comp = table[table["method"].isin(["+QwT", "+QwT-v2"])]
    for (name, arm), part in comp.groupby(["model", "arm"], sort=False):
        r = _paired(part, "+QwT", "+QwT-v2")
        added = part.groupby("method")["params_added"].mean()
        for bits, c in r.iterrows():
            verdict = ("beats" if c["significant"] and c["direction"] == "gain" else
                       "worse" if c["significant"] and c["direction"] == "harm" else
                       "matches" if -margin < c["ci_low"] and c["ci_high"] < margin else "inconclusive")
            v2_rows.append({"model": name, "arm": arm, "bits": bits, "QwT": 100 * c["baseline_mean"],
                            "QwT-v2": 100 * c["treatment_mean"], "v2 - QwT (pts)": 100 * c["mean_diff"],
                            "95% CI": f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]",
                            "p_adj": c["p_adjusted"], "params QwT (%)": 100 * added["+QwT"],
                            "params QwT-v2 (%)": 100 * added["+QwT-v2"], "verdict": verdict})
    rows = pd.DataFrame(v2_rows)
    ok = rows["verdict"].isin(["beats", "matches"])
    no_params = bool((rows["params QwT-v2 (%)"].abs() < 1e-9).all())
    text = (f"Verdict: matches or beats QwT in {int(ok.sum())} of {len(rows)} rows "
            f"(beats {int((rows['verdict'] == 'beats').sum())}, worse {int((rows['verdict'] == 'worse').sum())}, "
            f"inconclusive {int((rows['verdict'] == 'inconclusive').sum())}); parameters added after the fold: "
            f"{'none' if no_params else 'some'} (QwT adds "
            f"{rows.groupby('model')['params QwT (%)'].mean().round(1).to_dict()} %).")
    return rows, text


def interaction_claims(table: pd.DataFrame, base: str = "AdamW", craft: str = "SAM ρ=0.05",
                       models: Sequence[str] = tuple(RECIPE)) -> tuple[pd.DataFrame, str]:
    """CrAFT × compensation: per model × method × bits, the gain of each compensation on the `craft` arm minus
    its gain on the `base` arm, and SAM + compensation against AdamW + compensation, both paired by seed (Holm
    across the bit settings). A row *adds up* unless the SAM arm's gain is significantly smaller. Returns (the
    rows, the verdict sentence).

    >>> rows, verdict = interaction_claims(table)  # doctest: +SKIP
    """
    acc_w = table.pivot_table(index=["model", "arm", "seed", "bits"], columns="method", values="accuracy")
    inter_rows = []
    for name in models:
        for method in ("+QwT", "+QwT-v2"):
            gain = (acc_w[method] - acc_w["PTQ"]).rename("gain").reset_index()
            gain = gain[(gain["model"] == name) & (gain["bits"] != "FP32")]
            inter = compare_arms(gain, base, craft, value="gain", by="bits", pair="seed").set_index("setting")
            after = acc_w[method].rename("acc").reset_index()
            after = after[(after["model"] == name) & (after["bits"] != "FP32")]
            both = compare_arms(after, base, craft, value="acc", by="bits", pair="seed").set_index("setting")
            for bits, r in inter.iterrows():
                rb = both.loc[bits]
                smaller = bool(r["significant"] and r["direction"] == "harm")
                ahead = bool(rb["significant"] and rb["direction"] == "gain")
                behind = bool(rb["significant"] and rb["direction"] == "harm")
                inter_rows.append({"model": name, "method": method, "bits": bits,
                                   f"gain on {base}": 100 * r["baseline_mean"],
                                   f"gain on {craft}": 100 * r["treatment_mean"],
                                   "difference": 100 * r["mean_diff"], "p_adj": r["p_adjusted"],
                                   "SAM+comp - AdamW+comp": 100 * rb["mean_diff"], "p_adj ": rb["p_adjusted"],
                                   "verdict": ("flatness took part of it" if smaller else "adds up")
                                   + ("; SAM+comp ahead" if ahead else "; SAM+comp behind" if behind else "")})
    rows = pd.DataFrame(inter_rows)
    text = (f"Verdict: the gain shrinks significantly on the SAM arm in "
            f"{int(rows['verdict'].str.startswith('flatness').sum())} of {len(rows)} rows; SAM + compensation "
            f"is significantly ahead in {int(rows['verdict'].str.contains('ahead').sum())}, behind in "
            f"{int(rows['verdict'].str.contains('behind').sum())}.")
    return rows, text
