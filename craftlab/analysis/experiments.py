"""Experiments the tutorial notebooks run: arms × seeds of cached fine-tuning runs, one tidy table.

The notebooks in ``notebooks/`` call these so that no cell re-implements training, compression or
probing. Every fine-tuning run goes through :func:`craftlab.get_run`, so a (model, data, optimizer,
ρ, ASAM, epochs, seed) combination is trained once and shared by every notebook, the app and the CLI.

Typical use::

    arms = {"AdamW": {}, "SAM ρ=0.05": {"sam_rho": 0.05}}
    runs = run_arms(arms, seeds=(0, 1, 2))                 # one row per (arm, seed), checkpoints cached
    data = load_data_for(runs)
    df = sweep_runs(runs, data, settings=craftlab.settings_grid())   # one row per (run, setting)
    table = paired_gains(df, "AdamW", "SAM ρ=0.05")                 # per setting: paired gain ± s.e.
    print(claim_report(table))                                      # words generated from the numbers

The claim check is deliberately conservative: a difference counts only when its mean over seeds is
larger than two standard errors of the paired differences *and* than one test image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..checkpoint import load_checkpoint, read_meta
from ..compression.sweep import sweep
from ..data import DataBundle, load_data
from ..models import build_model
from ..settings import Setting, bits_label, parse_setting
from ..train.runs import RunSpec, get_run, run_dir

__all__ = [
    "DEFAULT_BITS",
    "accuracy_bar_figure",
    "arm_label",
    "bits_figure",
    "bits_label",
    "claim_report",
    "compress_kwargs",
    "compress_setting",
    "finite",
    "load_data_for",
    "load_run",
    "paired_gains",
    "parse_setting",
    "paths_figure",
    "probe_batches",
    "rescale_attention",
    "run_arms",
    "scale_invariance_table",
    "scatter_figure",
    "second_order_table",
    "setting_label",
    "sharpness_table",
    "sparsity_figure",
    "spearman_table",
    "spearman_test",
    "sweep_runs",
    "verdict",
]

DEFAULT_BITS = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 8))
"""The PTQ settings of the CrAFT walkthrough, from W8A8 down to W4A4 and W3A8."""

_RUN_KEYS = ("optimizer", "lr", "sam_rho", "adaptive")


# ----------------------------------------------------------------------------------------------
# runs


def arm_label(sam_rho: float = 0.0, adaptive: bool = False, optimizer: str = "adamw") -> str:
    """Human label of an arm: ``AdamW``, ``SAM ρ=0.05``, ``ASAM ρ=0.5`` (``SGD+SAM ρ=0.05`` for SGD)."""
    base = {"adamw": "AdamW", "sgd": "SGD"}.get(optimizer, optimizer)
    if not sam_rho:
        return base
    name = f"{'ASAM' if adaptive else 'SAM'} ρ={sam_rho:g}"
    return name if optimizer == "adamw" else f"{base}+{name}"


def _arm_items(arms: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> list[tuple[str, dict]]:
    if isinstance(arms, Mapping):
        items = [(str(label), dict(kw)) for label, kw in arms.items()]
    else:
        items = []
        for kw in arms:
            kw = dict(kw)
            items.append((kw.pop("label", None) or arm_label(kw.get("sam_rho", 0.0), kw.get("adaptive", False),
                                                               kw.get("optimizer", "adamw")), kw))
    for label, kw in items:
        unknown = sorted(set(kw) - set(_RUN_KEYS))
        if unknown:
            raise ValueError(f"arm {label!r}: unknown setting(s) {unknown}; an arm sets only {list(_RUN_KEYS)}")
    labels = [label for label, _ in items]
    if len(set(labels)) != len(labels):
        raise ValueError(f"arm labels must be unique, got {labels}")
    if not items:
        raise ValueError("no arms given")
    return items


def run_arms(
    arms: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    seeds: Sequence[int] = (0, 1),
    model: str = "vit-tiny",
    data: str = "digits",
    epochs: int = 8,
    progress: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    """Fine-tune (or fetch from the cache) every arm × seed; one row per run.

    Args:
        arms: label -> settings, the settings being any of ``optimizer`` (default ``"adamw"``), ``lr``,
            ``sam_rho`` (0 = no SAM) and ``adaptive`` (ASAM); e.g. ``{"AdamW": {}, "SAM ρ=0.05":
            {"sam_rho": 0.05}}``. A list of settings dicts is labelled by :func:`arm_label`.
        seeds: the same seeds for every arm, so that arms can be compared seed by seed (paired).
        model, data, epochs: shared by all arms: the arms differ only in their settings.
        progress: show tqdm bars while training; verbose: print one line per run.

    Returns:
        Columns ``arm, model, data, optimizer, lr, sam_rho, adaptive, seed, epochs, key, path,
        test_accuracy, val_accuracy, train_time_s, cached`` (``cached``: it was already in the cache,
        ``train_time_s`` is then the time measured when it was trained).
    """
    items = _arm_items(arms)
    rows = []
    for label, kw in items:
        for seed in seeds:
            spec = RunSpec(model=model, data=data, optimizer=kw.get("optimizer", "adamw"), lr=kw.get("lr"),
                           epochs=epochs, sam_rho=float(kw.get("sam_rho", 0.0)),
                           adaptive=bool(kw.get("adaptive", False)), seed=int(seed))
            t0 = time.perf_counter()
            cached = (run_dir(spec) / "craftlab.json").exists()
            path = get_run(spec, progress=progress)
            meta = read_meta(path)
            metrics = meta.get("metrics", {})
            train_time = float(sum(h.get("time_s", 0.0) for h in meta.get("history", [])))
            rows.append({"arm": label, "model": model, "data": data, "optimizer": spec.optimizer, "lr": spec.lr,
                         "sam_rho": spec.sam_rho, "adaptive": spec.adaptive, "seed": spec.seed, "epochs": epochs,
                         "key": spec.key, "path": str(path), "test_accuracy": metrics.get("test_accuracy"),
                         "val_accuracy": metrics.get("val_accuracy"), "train_time_s": train_time,
                         "cached": cached})
            if verbose:
                how = "cached" if cached else f"trained in {time.perf_counter() - t0:.0f} s"
                print(f"{model} {label:<14} seed {seed}: test accuracy {rows[-1]['test_accuracy']:.3f} ({how})",
                      flush=True)
    return pd.DataFrame(rows)


def load_run(row: Mapping[str, Any] | pd.Series) -> nn.Module:
    """The fine-tuned model of one row of :func:`run_arms` (eval mode)."""
    return load_checkpoint(row["path"])


def load_data_for(runs: pd.DataFrame | str = "vit-tiny", data: str | None = None, **kwargs: Any) -> DataBundle:
    """The data bundle the runs were fine-tuned on, with the same input configuration as :func:`craftlab.get_run`.

    ``runs`` is a :func:`run_arms` table (its model and data columns are used) or a model name.
    """
    if isinstance(runs, pd.DataFrame):
        model_name, data_name = runs["model"].iloc[0], runs["data"].iloc[0]
    else:
        model_name, data_name = runs, data or "digits"
    return load_data(data or data_name, model=build_model(model_name), **kwargs)


# ----------------------------------------------------------------------------------------------
# compression sweeps


def setting_label(row: Mapping[str, Any]) -> str:
    """The label of one sweep row (its ``setting`` column; :meth:`craftlab.settings.Setting.label`)."""
    return str(row["setting"]) if row.get("setting") else parse_setting(dict(row)).label()


def compress_kwargs(setting: str | Mapping[str, Any] | Setting) -> dict[str, Any]:
    """Keyword arguments of :func:`craftlab.compress` for a setting (label, dict or Setting)."""
    return parse_setting(setting).compress_kwargs()


def compress_setting(model: nn.Module, data: DataBundle, setting: str | Mapping[str, Any]) -> nn.Module:
    """``craftlab.compress`` of `model` under one setting (label or dict), calibrated on ``data.calib``."""
    from ..compression.pipeline import compress

    return compress(model, calib=data.calib, **compress_kwargs(setting))


def sweep_runs(runs: pd.DataFrame, data: DataBundle, settings: Iterable[Mapping[str, Any]] | None = None,
               split: str = "test", progress: bool = False, **grid: Any) -> pd.DataFrame:
    """:func:`craftlab.sweep` over every run of :func:`run_arms`: one row per (run, setting).

    Adds the run's columns (``arm, seed, sam_rho, adaptive, optimizer``), ``setting`` (a label,
    see :func:`setting_label`), ``bits`` (``W4A8`` for quantization rows) and ``bitops_per_mac``
    (w_bits × a_bits, 16 for a float side; 32 × 32 for FP32 rows).
    """
    frames = []
    for _, row in runs.iterrows():
        label = f"{row['arm']} / seed {row['seed']}"
        extra = {label: {c: row[c] for c in ("arm", "seed", "sam_rho", "adaptive", "optimizer") if c in row}}
        frames.append(sweep({label: load_run(row)}, data, settings=settings, split=split, progress=progress,
                            extra_columns=extra, **grid))
    df = pd.concat(frames, ignore_index=True)
    df["n_test"] = len(data.loader(split).dataset)
    quant = df["kind"] == "quant"
    df["bits"] = [bits_label(w, a) if q else None for w, a, q in zip(df["w_bits"], df["a_bits"], quant)]

    def bpm(w: Any, a: Any, kind: str) -> float:
        if kind == "fp":
            return 32.0 * 32.0
        if kind != "quant":
            return float("nan")
        wf = 16.0 if w is None or (isinstance(w, float) and math.isnan(w)) else float(w)
        af = 16.0 if a is None or (isinstance(a, float) and math.isnan(a)) else float(a)
        return wf * af

    df["bitops_per_mac"] = [bpm(w, a, k) for w, a, k in zip(df["w_bits"], df["a_bits"], df["kind"])]
    return df


# ----------------------------------------------------------------------------------------------
# the claim check


def paired_gains(df: pd.DataFrame, baseline: str, treatment: str, settings: Sequence[str] | None = None,
                 n_test: int | None = None) -> pd.DataFrame:
    """Treatment vs baseline, setting by setting, paired by seed.

    Per compression setting (``setting`` column of :func:`sweep_runs`): mean accuracy of both arms,
    mean accuracy drop (FP − compressed) of both, and the paired differences over the seeds both arms
    share: ``gain`` = mean of (treatment − baseline) compressed accuracy, ``drop_reduction`` = mean of
    (baseline drop − treatment drop), each with its standard error (``*_se``, NaN for one seed),
    ``wins`` = seeds where the treatment loses less accuracy, ``n`` = seeds. ``verdict`` applies
    :func:`verdict` to the drop reduction.

    ``table.attrs`` keeps ``baseline``, ``treatment``, ``one_image`` (1 / test-set size) and
    ``per_seed``: seed -> mean drop reduction over the settings that damage a model (the overall
    effect, one number per seed).
    """
    for arm in (baseline, treatment):
        if arm not in set(df["arm"]):
            raise ValueError(f"arm {arm!r} not in the table; have {sorted(set(df['arm']))}")
    if n_test is None and "n_test" in df.columns:
        n_test = int(df["n_test"].iloc[0])
    one_image = 1.0 / n_test if n_test else 0.0
    order = list(dict.fromkeys(df["setting"])) if settings is None else list(settings)
    rows, per_seed = [], {}
    for setting in order:
        part = df[df["setting"] == setting]
        if part.empty:
            raise ValueError(f"setting {setting!r} not in the table; have {list(dict.fromkeys(df['setting']))}")
        b = part[part["arm"] == baseline].set_index("seed")
        t = part[part["arm"] == treatment].set_index("seed")
        seeds = sorted(set(b.index) & set(t.index))
        if not seeds:
            raise ValueError(f"{baseline!r} and {treatment!r} share no seed for {setting!r}")
        b, t = b.loc[seeds], t.loc[seeds]
        gain = (t["accuracy"] - b["accuracy"]).to_numpy(float)
        red = (b["accuracy_drop"] - t["accuracy_drop"]).to_numpy(float)
        row = {"setting": setting, "n": len(seeds),
               "fp_baseline": float(b["fp_accuracy"].mean()), "fp_treatment": float(t["fp_accuracy"].mean()),
               "acc_baseline": float(b["accuracy"].mean()), "acc_treatment": float(t["accuracy"].mean()),
               "drop_baseline": float(b["accuracy_drop"].mean()), "drop_treatment": float(t["accuracy_drop"].mean()),
               "gain": float(gain.mean()), "gain_se": _se(gain),
               "drop_reduction": float(red.mean()), "drop_reduction_se": _se(red),
               "wins": int((red > 0).sum()), "losses": int((red < 0).sum())}
        row["verdict"] = verdict(row["drop_reduction"], row["drop_reduction_se"],
                                 max(row["drop_baseline"], row["drop_treatment"]), one_image)
        if row["verdict"] != "no damage":
            for seed, r in zip(seeds, red):
                per_seed.setdefault(int(seed), []).append(float(r))
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(baseline=baseline, treatment=treatment, one_image=one_image,
                     per_seed={s: float(np.mean(v)) for s, v in sorted(per_seed.items())})
    return out


def _se(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def verdict(effect: float, se: float, damage: float, one_image: float) -> str:
    """The rule of the claim check, for one paired effect (e.g. a drop reduction) over seeds.

    ``no damage`` when neither arm loses more than one test image on average; ``supports`` when the
    effect is positive by more than two standard errors and more than one test image; ``contradicts``
    for the mirror case; ``inconclusive`` otherwise (always, with one seed: no standard error).
    """
    if damage <= one_image:
        return "no damage"
    if not math.isfinite(se):
        return "inconclusive"
    margin = max(2.0 * se, one_image)
    if effect > margin:
        return "supports"
    if effect < -margin:
        return "contradicts"
    return "inconclusive"


def claim_report(table: pd.DataFrame, claim: str = "fine-tuning with SAM makes the model lose less accuracy "
                 "under post-training compression") -> str:
    """Sentences summarising :func:`paired_gains`: one line per setting, the overall effect and a verdict.

    Every number and every word of the verdict is computed from `table`.
    """
    b, t = table.attrs.get("baseline", "baseline"), table.attrs.get("treatment", "treatment")
    one_image = table.attrs.get("one_image", 0.0)
    pp = lambda v: f"{100 * v:+.1f} pp"
    n = int(table["n"].max())
    lines = [f"Claim: {claim}.",
             f"{t} vs {b}, paired over {n} seed(s); accuracies in %, drops and reductions in percentage points (pp).",
             ""]
    width = max(len(s) for s in table["setting"])
    head = f"  {'setting':<{width}}  {'accuracy':>15}  {'drop':>13}  {'drop reduction':>17}  seeds  verdict"
    lines += [head, "  " + "-" * (len(head) - 2)]
    for r in table.to_dict("records"):
        se = f" ± {100 * r['drop_reduction_se']:.1f}" if math.isfinite(r["drop_reduction_se"]) else ""
        lines.append(f"  {r['setting']:<{width}}  {100 * r['acc_baseline']:5.1f} -> {100 * r['acc_treatment']:5.1f}"
                     f"  {100 * r['drop_baseline']:4.1f} -> {100 * r['drop_treatment']:4.1f}"
                     f"  {pp(r['drop_reduction']) + se:>17}  {r['wins']}/{r['n']}    {r['verdict']}")
    damaged = table[table["verdict"] != "no damage"]
    lines.append("")
    fp_gap = float(table["fp_treatment"].iloc[0] - table["fp_baseline"].iloc[0])
    lines.append(f"Uncompressed (FP32) accuracy: {b} {100 * table['fp_baseline'].iloc[0]:.1f}%, "
                 f"{t} {100 * table['fp_treatment'].iloc[0]:.1f}% ({pp(fp_gap)}).")
    if damaged.empty:
        lines.append("Verdict: no setting cost either model more than one test image: nothing to support or "
                     "contradict here.")
        return "\n".join(lines)
    per_seed = table.attrs.get("per_seed", {})
    if per_seed:
        v = np.array(list(per_seed.values()))
        se = _se(v)
        se_txt = f" ± {100 * se:.1f} (s.e.)" if math.isfinite(se) else ""
        lines.append(f"Overall: averaged over the {len(damaged)} settings that cost accuracy, the drop reduction is "
                     f"{pp(float(v.mean()))}{se_txt}; per seed " + ", ".join(
                         f"{s}: {pp(x)}" for s, x in per_seed.items()) + ".")
        overall = verdict(float(v.mean()), se, 1.0, one_image)
        lines.append(f"Overall effect vs seed noise: {overall}.")
    counts = damaged["verdict"].value_counts()
    sup, con, inc = (int(counts.get(k, 0)) for k in ("supports", "contradicts", "inconclusive"))
    k = len(damaged)
    if sup == k:
        words = "the measurements SUPPORT the claim at every setting that costs accuracy"
    elif sup > 0 and con == 0:
        words = (f"the measurements PARTLY SUPPORT the claim: it holds beyond seed noise at {sup} of {k} settings, "
                 f"the other {inc} are within noise, none contradicts it")
    elif sup == 0 and con == 0:
        words = f"the measurements are INCONCLUSIVE: at all {k} settings the difference is within seed noise"
    elif sup == 0:
        words = (f"the measurements CONTRADICT the claim at {con} of {k} settings "
                 f"({inc} within noise, none supports it)")
    else:
        words = f"the measurements are MIXED: {sup} of {k} settings support the claim, {con} contradict it"
    best = damaged.loc[damaged["drop_reduction"].idxmax()]
    worst = damaged.loc[damaged["drop_reduction"].idxmin()]
    lines.append(f"Verdict: {words}. Largest drop reduction {pp(best['drop_reduction'])} ({best['setting']}), "
                 f"smallest {pp(worst['drop_reduction'])} ({worst['setting']}).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# sharpness of many runs


def probe_batches(data: DataBundle, n_examples: int = 256, batch_size: int = 128,
                  split: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:meth:`DataBundle.probe_batches`: the first `n_examples` of a split, in batches of `batch_size`."""
    return data.probe_batches(n_examples, batch_size, split)


def sharpness_table(runs: pd.DataFrame, data: DataBundle, n_examples: int = 256, rho: float = 0.05,
                    asam_rho: float = 0.5, max_iter: int = 20, tol: float = 1e-3, n_samples: int = 8,
                    split: str = "train", verbose: bool = True) -> pd.DataFrame:
    """Sharpness of every run of :func:`run_arms` on the same `n_examples` training examples.

    Columns added to the runs: ``probe_loss`` (mean training loss on those examples), ``lambda_max`` (Lanczos,
    ≤ `max_iter` Hessian-vector products), ``trace`` and ``trace_stderr`` (Hutchinson, `n_samples` probes),
    ``eps_sharpness`` (one-step SAM ε̂ of radius `rho`) and ``asam_sharpness`` (one-step ASAM ε̂ of radius
    `asam_rho`), ``probe_s`` (seconds).
    """
    from ..probes.sharpness import eps_sharpness, sharpness_summary

    batches = probe_batches(data, n_examples, split=split)
    rows = []
    for _, row in runs.iterrows():
        model = load_run(row)
        t0 = time.perf_counter()
        s = sharpness_summary(model, batches, rho=rho, n_samples=n_samples, max_iter=max_iter, tol=tol)
        a = eps_sharpness(model, batches, rho=asam_rho, adaptive=True)
        rows.append({**row.to_dict(), "probe_loss": s["loss"], "lambda_max": s["lambda_max"],
                     "lambda_max_converged": s["lambda_max_converged"], "trace": s["trace"],
                     "trace_stderr": s["trace_stderr"], "eps_sharpness": s["eps_sharpness"],
                     "asam_sharpness": a.sharpness, "probe_s": time.perf_counter() - t0})
        if verbose:
            print(f"{row['arm']:<14} seed {row['seed']}: λmax {s['lambda_max']:8.2f}  Tr(H) {s['trace']:8.1f}"
                  f"  ε-sharpness {s['eps_sharpness']:.4f}  ASAM {a.sharpness:.4f}", flush=True)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# scale invariance


def rescale_attention(model: nn.Module, alpha: float) -> nn.Module:
    """A copy of a timm ViT whose attention queries are scaled by `alpha` and keys by ``1/alpha``.

    In every block the rows of ``attn.qkv`` that make the queries (weight and bias) are multiplied by
    `alpha` and those that make the keys by ``1/alpha``. Attention logits ``q·k`` are unchanged, so the
    network computes exactly the same function (up to float rounding), yet its parameters, and with them
    the Hessian, the plain SAM neighbourhood and anything measured in raw parameter units, change.
    Per-row (filter) normalization and ASAM's ``|w|``-scaled ball are invariant to this rescaling.
    """
    import copy

    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    out = copy.deepcopy(model)
    found = 0
    with torch.no_grad():
        for module in out.modules():
            qkv = getattr(module, "qkv", None)
            if isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0:
                d = qkv.out_features // 3
                qkv.weight[:d] *= alpha
                qkv.weight[d:2 * d] /= alpha
                if qkv.bias is not None:
                    qkv.bias[:d] *= alpha
                    qkv.bias[d:2 * d] /= alpha
                found += 1
    if not found:
        raise ValueError("the model has no attention module with a fused `qkv` Linear (a timm ViT has one per block)")
    return out


def scale_invariance_table(model: nn.Module, data: DataBundle, alphas: Sequence[float] = (1.0, 2.0, 4.0),
                           n_examples: int = 256, rho: float = 0.05, asam_rho: float = 0.5, max_iter: int = 20,
                           tol: float = 1e-3) -> pd.DataFrame:
    """Sharpness measures of ``rescale_attention(model, alpha)`` for each alpha (same function each time).

    Columns: ``alpha``, ``max_logit_change`` (largest |logit difference| to alpha = 1 on the probe examples),
    ``loss``, ``lambda_max``, ``eps_sharpness`` (SAM ball ρ), ``asam_sharpness`` (ASAM ball), and
    ``weight_norm``.
    """
    from ..probes.sharpness import eps_sharpness, top_hessian_eigenvalues

    batches = probe_batches(data, n_examples)
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        ref = model.eval()(x)
    rows = []
    for alpha in alphas:
        m = rescale_attention(model, float(alpha)).eval()
        with torch.no_grad():
            change = float((m(x) - ref).abs().max())
        eig = top_hessian_eigenvalues(m, batches, k=1, max_iter=max_iter, tol=tol)
        sam = eps_sharpness(m, batches, rho=rho)
        asam = eps_sharpness(m, batches, rho=asam_rho, adaptive=True)
        wn = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in m.parameters()))
        rows.append({"alpha": float(alpha), "max_logit_change": change, "loss": sam.loss,
                     "lambda_max": eig.eigenvalues[0], "eps_sharpness": sam.sharpness,
                     "asam_sharpness": asam.sharpness, "weight_norm": wn})
    return pd.DataFrame(rows)


def spearman_table(df: pd.DataFrame, xs: Sequence[str], ys: Sequence[str]) -> pd.DataFrame:
    """Spearman rank correlation of every x column with every y column (rows x, columns y)."""
    from ..viz.plots import spearman

    return pd.DataFrame({y: [spearman(df[x], df[y]) for x in xs] for y in ys}, index=list(xs))


def finite(values: Iterable[float]) -> np.ndarray:
    """The finite entries of `values` as a float array."""
    v = np.asarray(list(values), dtype=float)
    return v[np.isfinite(v)]


def spearman_test(x: Iterable[float], y: Iterable[float], n_permutations: int = 10000,
                  seed: int = 0) -> tuple[float, float, int]:
    """Spearman ρ of the finite pairs, a two-sided permutation p-value and the number of pairs."""
    from ..viz.plots import rankdata, spearman

    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return rho, float("nan"), int(len(x))
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    gen = np.random.default_rng(seed)
    perms = np.argsort(gen.random((n_permutations, len(ry))), axis=1)
    null = (ry[perms] * rx).sum(axis=1) / den
    p = (1 + int((np.abs(null) >= abs(rho) - 1e-12).sum())) / (n_permutations + 1)
    return rho, p, int(len(x))


# ----------------------------------------------------------------------------------------------
# second-order prediction of the compression damage


def second_order_table(runs: pd.DataFrame, data: DataBundle, settings: Sequence[str | Mapping[str, Any]],
                       n_examples: int = 256, split: str = "train") -> pd.DataFrame:
    """Measured loss jump vs its second-order prediction along each run's compression direction.

    For every run and setting, δ = C(w) − w and :func:`craftlab.landscape.compression_path` (on the
    original architecture, so only the weights change) gives ``measured`` = L(w + δ) − L(w) and
    ``predicted`` = g·δ + ½ δᵀHδ, with ``first_order`` = g·δ and ``curvature`` = ½ δᵀHδ, on the same
    `n_examples` examples for every model. ``delta_norm`` is ‖δ‖. ``full_jump`` is the loss change of the
    compressed model itself (for PTQ with ``a_bits`` it includes the activation quantization, which is not
    a weight move and which the prediction does not cover).
    """
    from ..probes.landscape import compression_path

    batches = probe_batches(data, n_examples, split=split)
    rows = []
    for _, row in runs.iterrows():
        model = load_run(row)
        for setting in settings:
            comp = compress_setting(model, data, setting)
            path = compression_path(model, comp, batches, t_range=(0.0, 1.0), steps=2, on="original")
            meta = path.meta
            rows.append({"arm": row["arm"], "seed": row["seed"], "sam_rho": row["sam_rho"],
                         "adaptive": row["adaptive"],
                         "setting": setting if isinstance(setting, str) else setting_label(setting),
                         "measured": meta["measured_jump"], "predicted": meta["predicted_jump"],
                         "first_order": meta["grad_dot_delta"], "curvature": 0.5 * meta["delta_H_delta"],
                         "full_jump": meta["loss_compressed"] - meta["loss_original"],
                         "delta_norm": meta["delta_norm"], "loss": meta["loss_original"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# figures (plotly) built on craftlab.plots


def sparsity_figure(df: pd.DataFrame, method: str = "wanda", title: str | None = None, **kwargs: Any) -> Any:
    """Accuracy vs unstructured sparsity for one pruning method, one line per arm, ±1 std band over seeds
    (the FP32 rows are drawn at sparsity 0)."""
    from ..viz.plots import accuracy_curve_figure

    part = df[(df["kind"] == "fp") | ((df["kind"] == "prune") & (df["method"] == method) & df["pattern"].isna())]
    part = part.assign(sparsity=part["sparsity"].fillna(0.0).astype(float))
    title = title or f"{method} pruning: test accuracy vs sparsity (mean ± 1 std over seeds)"
    return _bands_without_markers(accuracy_curve_figure(part, x="sparsity", group="arm", title=title, **kwargs))


def _bands_without_markers(fig: Any) -> Any:
    # plotly draws markers on a scatter trace with < 20 points unless its mode says otherwise; the ±std
    # band polygons of accuracy_curve_figure set no mode, so their vertices would show as stray dots
    fig.update_traces(mode="lines", selector={"fill": "toself"})
    return fig


def bits_figure(df: pd.DataFrame, title: str | None = None, **kwargs: Any) -> Any:
    """Accuracy vs bit setting (x = w_bits × a_bits, BitOPs per MAC, log axis, labelled W·A·), one line per arm."""
    from ..viz.plots import accuracy_curve_figure

    part = df[df["kind"] == "quant"]
    fig = _bands_without_markers(accuracy_curve_figure(
        part, x="bitops_per_mac", group="arm", reverse_x=True,
        title=title or "PTQ: test accuracy vs bits (mean ± 1 std over seeds)", **kwargs))
    ticks = part.drop_duplicates("bitops_per_mac").sort_values("bitops_per_mac")
    fig.update_xaxes(type="log", tickvals=ticks["bitops_per_mac"].tolist(),
                     ticktext=[f"{b} ({int(v)})" for b, v in zip(ticks["bits"], ticks["bitops_per_mac"])],
                     title="bits (w_bits × a_bits = BitOPs per MAC)")
    return fig


def scatter_figure(df: pd.DataFrame, x: str, y: str, color: str = "arm", label: str | None = "model",
                   title: str | None = None, identity: bool = False, **kwargs: Any) -> Any:
    """:func:`craftlab.plots.sharpness_scatter_figure` (points, least-squares line, Spearman ρ in the title)
    with one colour per arm and the legend to the right of the plot, where a long list of arms fits.
    ``identity=True`` adds the line y = x (for predicted-vs-measured plots)."""
    from ..viz.plots import sharpness_scatter_figure

    fig = sharpness_scatter_figure(df, x=x, y=y, color=color, label=label, title=title, **kwargs)
    if identity:
        lo = float(np.nanmin(df[[x, y]].to_numpy(float)))
        hi = float(np.nanmax(df[[x, y]].to_numpy(float)))
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name=f"{y} = {x}",
                        line={"color": "black", "dash": "dot", "width": 1})
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"},
                      margin={"r": 160})
    return fig


def paths_figure(paths: Mapping[str, Any], title: str | None = None, height: int = 420) -> Any:
    """Several :class:`~craftlab.landscape.PathResult` on one plot: measured loss (solid) and second-order
    prediction (dashed) per label, the compressed point (t = 1) starred."""
    import plotly.graph_objects as go

    from ..viz.plots import PALETTE, TEMPLATE

    fig = go.Figure()
    for k, (label, res) in enumerate(paths.items()):
        color = PALETTE[k % len(PALETTE)]
        t = np.asarray(res.t, float)
        fig.add_trace(go.Scatter(x=t, y=res.loss, mode="lines", name=f"{label}: measured",
                                 line={"color": color, "width": 2}))
        if np.isfinite(np.asarray(res.predicted, float)).any():
            fig.add_trace(go.Scatter(x=t, y=res.predicted, mode="lines", name=f"{label}: 2nd-order",
                                     line={"color": color, "width": 2, "dash": "dash"}))
        i1 = res.index_compressed
        fig.add_trace(go.Scatter(x=[t[i1]], y=[res.loss[i1]], mode="markers", showlegend=False,
                                 marker={"symbol": "star", "size": 14, "color": color,
                                         "line": {"width": 1, "color": "black"}},
                                 hovertemplate=f"{label} compressed: loss %{{y:.4g}}<extra></extra>"))
    fig.add_vline(x=0.0, line={"dash": "dot", "color": "grey", "width": 1})
    fig.update_layout(title=title, height=height, template=TEMPLATE, xaxis_title="t  (w + t·(C(w) − w))",
                      yaxis_title="loss", margin={"l": 60, "r": 20, "t": 60 if title else 30, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0})
    return fig


def accuracy_bar_figure(df: pd.DataFrame, x: str = "setting", group: str = "arm", y: str = "accuracy",
                        title: str | None = None, height: int = 380) -> Any:
    """Grouped bars of `y` per `x` (e.g. settings) and `group` (e.g. arms); values printed on the bars."""
    import plotly.graph_objects as go

    from ..viz.plots import PALETTE, TEMPLATE

    fig = go.Figure()
    for k, (g, part) in enumerate(df.groupby(group, sort=False)):
        fig.add_trace(go.Bar(x=part[x], y=part[y], name=str(g), marker_color=PALETTE[k % len(PALETTE)],
                             text=[f"{v:.1%}" if y == "accuracy" else f"{v:.3g}" for v in part[y]],
                             textposition="outside"))
    fig.update_layout(barmode="group", title=title, height=height, template=TEMPLATE, yaxis_title=y,
                      margin={"l": 60, "r": 20, "t": 60 if title else 30, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0})
    if y == "accuracy":  # zoom on the differences, but never cut a bar's top
        low = max(0.0, math.floor((float(df[y].min()) - 0.1) * 10) / 10)
        fig.update_yaxes(range=[low, 1.04], tickformat=".0%")
    return fig
