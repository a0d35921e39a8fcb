"""Sharpness probes: ε-sharpness (SAM / ASAM balls), per-layer curvature, and a quick summary.

Every probe runs the model in eval mode (BatchNorm uses running statistics, no dropout) inside
:func:`craftlab.probes._probe.preserved`, so the model comes back bit-identical: parameters, buffers,
``requires_grad`` flags, ``.grad`` and train/eval flags. Results therefore do not depend on whether
the model was in train or eval mode. The common arguments (``batches``, ``params``, ``loss_fn``) are
those of :mod:`craftlab.probes.hessian`, whose Hessian probes (``top_hessian_eigenvalues``,
``hessian_trace``, ``hessian_vector_product``, ``spectral_density``, ``density_on_grid``) are
re-exported here, so ``craftlab.sharpness.top_hessian_eigenvalues`` keeps working.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import unknown_name
from ._probe import LossFn, flat, inner, loss_and_grad, loss_value, on_device, probing, random_like
from .hessian import (
    EigenResult,
    HessianOperator,
    SpectralDensity,
    TraceResult,
    density_on_grid,
    eig_lanczos,
    hessian_trace,
    hessian_vector_product,
    hutchinson,
    mean_stderr,
    spectral_density,
    top_hessian_eigenvalues,
)
from .results import EpsSharpnessResult

__all__ = [
    "EigenResult",
    "EpsSharpnessResult",
    "SpectralDensity",
    "TraceResult",
    "density_on_grid",
    "eps_sharpness",
    "hessian_trace",
    "hessian_vector_product",
    "layer_sharpness",
    "sharpness_summary",
    "spectral_density",
    "top_hessian_eigenvalues",
]


def _eps_from_grad(ts: list[torch.Tensor | None], u: list[torch.Tensor], g: list[torch.Tensor], alpha: float,
                   rho: float) -> list[torch.Tensor]:
    """One normalised ascent step of length `alpha` in the (scaled) coordinates u = ε/T, projected on ‖u‖ ≤ ρ."""
    tg = [g_i if t is None else t * g_i for t, g_i in zip(ts, g)]
    norm = math.sqrt(inner(tg, tg))
    u = [u_i + (alpha / (norm + 1e-12)) * d for u_i, d in zip(u, tg)]
    u_norm = math.sqrt(inner(u, u))
    if u_norm > rho:
        u = [u_i * (rho / u_norm) for u_i in u]
    return u


def eps_sharpness(model: nn.Module, batches: Any, rho: float = 0.05, adaptive: bool = False, steps: int = 1,
                  eta: float = 0.0, params: Sequence[str] | None = None, loss_fn: LossFn = F.cross_entropy,
                  return_perturbation: bool = False) -> EpsSharpnessResult:
    """Max loss increase in a ρ-ball around the weights: max_{‖ε/T‖≤ρ} L(w+ε) − L(w) (a lower bound).

    ``adaptive=False``: T = 1 (plain L2 ball); ``adaptive=True``: ASAM's ball with T = |w| + η.
    ``steps=1``: SAM's one-step ε̂ = ρ T²g/‖Tg‖ (= ρ g/‖g‖ for the plain ball), the same formula as
    davda54/sam. ``steps>1``: that ε̂ is the first iterate, then ``steps−1`` further normalised
    gradient-ascent steps of length 2ρ/steps in u = ε/T, each projected back onto ‖u‖ ≤ ρ; the
    highest loss met is kept, so the result is never below the one-step value. Costs ``steps``
    forward+backward passes plus one forward.
    """
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with probing(model, params) as sel:
        ps = [p for _, p in sel]
        bs = on_device(batches, model)
        w0 = [p.detach().clone() for p in ps]
        ts = [(w.abs() + eta) if adaptive else None for w in w0]
        loss0, g = loss_and_grad(model, bs, ps, loss_fn)
        u = [torch.zeros_like(p) for p in ps]
        best, best_u = -math.inf, u
        for s in range(steps):
            u = _eps_from_grad(ts, u, g, rho if s == 0 else 2.0 * rho / steps, rho)
            with torch.no_grad():
                for p, w, t, u_i in zip(ps, w0, ts, u):
                    p.copy_(w + (u_i if t is None else t * u_i))
            if s < steps - 1:
                loss_s, g = loss_and_grad(model, bs, ps, loss_fn)
            else:
                loss_s = loss_value(model, bs, loss_fn)
            if loss_s > best:
                best, best_u = loss_s, u
        eps = [u_i if t is None else t * u_i for t, u_i in zip(ts, best_u)]
        pert = {n: e.detach().clone() for (n, _), e in zip(sel, eps)} if return_perturbation else None
        result = EpsSharpnessResult(best - loss0, loss0, best, rho, adaptive, steps,
                                    math.sqrt(inner(best_u, best_u)), math.sqrt(inner(eps, eps)), pert)
    return result


def _weight_modules(model: nn.Module, modules: Sequence[str] | None) -> list[str]:
    named = dict(model.named_modules())
    if modules is None:
        return [n for n, m in named.items() if isinstance(m, (nn.Conv2d, nn.Linear))
                and isinstance(getattr(m, "weight", None), torch.Tensor)]
    out = []
    for n in ([modules] if isinstance(modules, str) else modules):
        if n not in named:
            raise unknown_name("module", n, named)
        if not isinstance(getattr(named[n], "weight", None), nn.Parameter):
            raise TypeError(f"module {n!r} has no weight parameter")
        out.append(n)
    return out


def layer_sharpness(model: nn.Module, batches: Any, measure: str = "trace", n_samples: int = 50,
                    modules: Sequence[str] | None = None, seed: int = 0, max_iter: int = 50, tol: float = 1e-3,
                    distribution: str = "rademacher", loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Curvature of each layer's weight block H_ll (the block-diagonal Hessian restricted to one weight).

    `modules`: module names; default every ``nn.Conv2d`` / ``nn.Linear`` (frozen ones included: their
    curvature still matters for compressing them). Returns module name → value:

    - ``measure="trace"``: Tr(H_ll) by Hutchinson. All layers share each probe (one Hessian-vector
      product per sample over all weights, v_lᵀ(Hv)_l per layer: unbiased for Tr(H_ll) since the
      cross-layer terms have zero mean), so the values sum exactly to ``hessian_trace`` over the same
      weights with the same seed. Cost: `n_samples` products.
    - ``measure="lambda_max"``: the largest-magnitude eigenvalue of H_ll by Lanczos (`max_iter`,
      `tol`), one shared gradient graph, products restricted to the block. Cost: ~10–30 products per layer.
    """
    if measure not in ("trace", "lambda_max"):
        raise unknown_name("measure", measure, ("trace", "lambda_max"))
    mods = _weight_modules(model, modules)
    if not mods:
        raise ValueError("no Conv2d/Linear modules found; pass `modules`")
    names = [f"{m}.weight" if m else "weight" for m in mods]
    gen = torch.Generator().manual_seed(seed)
    with probing(model, names) as sel:
        op = HessianOperator(model, on_device(batches, model), [p for _, p in sel], loss_fn)
        if measure == "trace":
            samples = hutchinson(op, n_samples, gen, distribution, blocks=[[i] for i in range(len(sel))])
            values = torch.tensor(samples, dtype=torch.float64).mean(0).tolist()
        else:
            values = [eig_lanczos(op, 1, max_iter, tol, gen, False, idx=[i]).values[0] for i in range(len(sel))]
        del op
    return dict(zip(mods, values))


def sharpness_summary(model: nn.Module, batches: Any, rho: float = 0.05, adaptive: bool = False,
                      n_samples: int = 4, max_iter: int = 10, tol: float = 1e-2, seed: int = 0,
                      params: Sequence[str] | None = None, loss_fn: LossFn = F.cross_entropy) -> dict[str, Any]:
    """Quick sharpness read-out for display; one gradient graph is shared by all three measures.

    Returns a dict with ``loss``; ``lambda_max`` (largest-magnitude Hessian eigenvalue by Lanczos, at
    most `max_iter` products, relative tolerance `tol`) and ``lambda_max_converged``; ``trace`` and
    ``trace_stderr`` (Hutchinson with `n_samples` Rademacher probes, the first of which is the Lanczos
    start vector, so it costs `n_samples` − 1 extra products); ``eps_sharpness`` and ``perturbed_loss``
    (one-step SAM ε̂, or ASAM's with ``adaptive=True``, radius `rho`); ``n_hvp``; ``seconds``.

    With the defaults (≤ 13 products) this takes about 1–3 s on the zoo models with one 128-image
    batch on 2 CPU cores (see benchmarks/bench_hessian.py); raise `n_samples` / `max_iter` and lower
    `tol` for tighter numbers (the trace in particular is rough: read it with its stderr).
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with probing(model, params) as sel:
        ps = [p for _, p in sel]
        bs = on_device(batches, model)
        op = HessianOperator(model, bs, ps, loss_fn)
        samples: list[float] = []
        if n_samples > 0:
            v0 = flat([random_like(p, gen, "rademacher") for p in ps])
            values, _, converged, alpha0, _ = eig_lanczos(op, 1, max_iter, tol, gen, False, v0=v0)
            samples = [alpha0 * float(v0.double().norm()) ** 2]  # v0ᵀHv0 = ‖v0‖² q1ᵀHq1
            samples += [s[0] for s in hutchinson(op, n_samples - 1, gen, "rademacher")]
        else:
            values, _, converged, _, _ = eig_lanczos(op, 1, max_iter, tol, gen, False)
        n_hvp = op.n_hvp
        loss0, g = op.loss_and_grad()
        del op  # free the graphs before the weights are perturbed in place
        w0 = [p.detach().clone() for p in ps]
        ts = [w.abs() if adaptive else None for w in w0]
        u = _eps_from_grad(ts, [torch.zeros_like(p) for p in ps], g, rho, rho)
        with torch.no_grad():
            for p, w, t, u_i in zip(ps, w0, ts, u):
                p.copy_(w + (u_i if t is None else t * u_i))
        perturbed = loss_value(model, bs, loss_fn)
    trace, stderr = mean_stderr(samples) if samples else (float("nan"), float("nan"))
    return {
        "loss": loss0, "lambda_max": values[0], "lambda_max_converged": converged,
        "trace": trace, "trace_stderr": stderr, "eps_sharpness": perturbed - loss0,
        "perturbed_loss": perturbed, "rho": rho, "adaptive": adaptive, "n_hvp": n_hvp,
        "seconds": time.perf_counter() - t0,
    }
