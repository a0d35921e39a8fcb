"""Sharpness of many runs: probe tables over the runs of :func:`craftlab.studies.craft.run_arms`,
the scale-invariance demonstration, Spearman tables, and the second-order prediction of the loss jump.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..analysis import stats
from ..analysis.stats import spearman
from ..data import DataBundle
from ..probes._probe import preserved
from ..settings import parse_setting
from .craft import compress_setting, load_run

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
    with torch.no_grad(), preserved(model):  # eval mode for the reference, the caller's mode restored
        ref = model(x)
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
    return pd.DataFrame({y: [spearman(df[x], df[y]) for x in xs] for y in ys}, index=list(xs))


def finite(values: Iterable[float]) -> np.ndarray:
    """The finite entries of `values` as a float array."""
    v = np.asarray(list(values), dtype=float)
    return v[np.isfinite(v)]


def spearman_test(x: Iterable[float], y: Iterable[float], n_permutations: int = 10000,
                  seed: int = 0) -> tuple[float, float, int]:
    """Spearman ρ of the finite pairs, a two-sided permutation p-value and the number of pairs
    (:func:`craftlab.analysis.stats.spearman_test`, a local RNG: the caller's random state is untouched)."""
    return stats.spearman_test(np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float),
                               n_permutations=n_permutations, seed=seed)


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
                         "setting": parse_setting(setting).label(),
                         "measured": meta["measured_jump"], "predicted": meta["predicted_jump"],
                         "first_order": meta["grad_dot_delta"], "curvature": 0.5 * meta["delta_H_delta"],
                         "full_jump": meta["loss_compressed"] - meta["loss_original"],
                         "delta_norm": meta["delta_norm"], "loss": meta["loss_original"]})
    return pd.DataFrame(rows)
