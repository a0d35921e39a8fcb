"""Compression slices of the loss landscape: the path from the weights w to their compressed version
C(w), its second-order (gradient + Hessian) prediction, and the plane through both.

``delta = C(w) - w`` is taken over the named parameters (the two models must share names and shapes).
The conventions of :mod:`craftlab.probes.landscape` hold (eval mode, exact restore, example-weighted
mean losses, top-1 accuracy, ``meta["timing"]``); these functions are re-exported there, so
``craftlab.landscape.compression_path`` is this module's. The compressed model may have a different
forward (quantized activations, masks): ``on`` chooses which architecture computes the losses, and the
endpoints t = 0 and t = 1 are evaluated at exactly the original and compressed parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._grid import (
    Direction,
    Evaluator,
    check_same_params,
    direction_dot,
    direction_norm,
    evaluate,
    evaluate_grid,
    model_info,
    named_params,
    symmetric_axis,
    with_points,
)
from ._probe import LossFn, inner, on_device, preserved, probing
from .directions import random_direction
from .hessian import HessianOperator
from .results import PathResult, PlaneResult

__all__ = ["compression_delta", "compression_path", "compression_plane", "second_order_terms"]


def compression_delta(model: nn.Module, compressed_model: nn.Module) -> Direction:
    """``delta = C(w) - w`` over the named parameters (same names and shapes required), in `model`'s dtype."""
    check_same_params(model, compressed_model)
    pc = named_params(compressed_model)
    return {n: (pc[n].detach().to(dtype=p.dtype, device=p.device) - p.detach()) for n, p in model.named_parameters()}


def second_order_terms(model: nn.Module, batches: Any, delta: Mapping[str, torch.Tensor],
                       loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """``g.delta`` and ``delta.H.delta`` of the mean loss at the model's weights, and the loss.

    The second-order model of the loss change is ``dL(t) ~ t g.delta + t^2/2 delta.H.delta``. One gradient
    and one Hessian-vector product (:class:`~craftlab.probes.hessian.HessianOperator`, Pearlmutter's
    trick), with respect to the parameters named in `delta` (frozen ones included, the others held
    fixed), in eval mode; the model is left untouched.
    """
    params = named_params(model)
    names = [n for n in params if n in delta]
    ds = {n: delta[n].to(dtype=params[n].dtype, device=params[n].device) for n in names}
    if not names or direction_norm(ds) == 0.0:
        return {"loss": evaluate(model, batches, loss_fn)[0], "grad_dot_delta": 0.0, "delta_H_delta": 0.0}
    with probing(model, names) as sel:
        op = HessianOperator(model, on_device(batches, model), [p for _, p in sel], loss_fn)
        vs = [ds[n] for n, _ in sel]
        loss, g = op.loss_and_grad()
        gd, dhd = inner(g, vs), inner(vs, op.matvec(vs))
        del op
    return {"loss": loss, "grad_dot_delta": gd, "delta_H_delta": dhd}


def _path_targets(model: nn.Module, compressed_model: nn.Module, on: str) -> nn.Module:
    if on == "compressed":
        return compressed_model
    if on == "original":
        return model
    raise ValueError(f"on must be 'compressed' or 'original', got {on!r}")


def _grid_along(model: nn.Module, compressed_model: nn.Module, target: nn.Module, batches: Any, loss_fn: LossFn,
                delta: Direction, eta: Direction | None, alphas: np.ndarray,
                betas: np.ndarray, buffers: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any], int]:
    """Loss/accuracy on ``w + alpha delta (+ beta eta)`` computed by `target`, with alpha = 0 and 1 evaluated at
    exactly the original and compressed parameters; every parameter of both models is restored afterwards.
    With `buffers`, the floating-point buffers both models have (BatchNorm statistics) move along alpha too."""
    with preserved(model), preserved(compressed_model):
        names = list(delta)
        tp = named_params(target)
        targets = [tp[n] for n in names]
        pm, pc = named_params(model), named_params(compressed_model)
        w = [pm[n].detach().to(dtype=tp[n].dtype, device=tp[n].device).clone() for n in names]
        c = [pc[n].detach().to(dtype=tp[n].dtype, device=tp[n].device).clone() for n in names]
        ev = Evaluator(target, on_device(batches, target), loss_fn)
        d = [delta[n].to(dtype=tp[n].dtype) for n in names]
        e = None if eta is None else [eta[n].to(dtype=tp[n].dtype) for n in names]
        if buffers:
            bt, bm, bc = (dict(m.named_buffers()) for m in (target, model, compressed_model))
            bn = [n for n, b in bt.items() if b.is_floating_point() and n in bm and n in bc
                  and bm[n].shape == b.shape == bc[n].shape]
            targets += [bt[n] for n in bn]
            w += [bm[n].detach().to(dtype=bt[n].dtype, device=bt[n].device).clone() for n in bn]
            c += [bc[n].detach().to(dtype=bt[n].dtype, device=bt[n].device).clone() for n in bn]
            d += [ci - wi for ci, wi in zip(c[len(names):], w[len(names):])]
            if e is not None:
                e += [torch.zeros_like(x) for x in w[len(names):]]
        loss, acc, timing = evaluate_grid(ev, targets, w, d, e, alphas, betas, anchors={0.0: w, 1.0: c})
    return loss, acc, timing, ev.n

def compression_path(model: nn.Module, compressed_model: nn.Module, batches: Any,
                     t_range: tuple[float, float] = (-0.5, 1.5), steps: int = 41, second_order: bool = True,
                     loss_fn: LossFn = F.cross_entropy, on: str = "compressed", buffers: bool = False) -> PathResult:
    """Loss along the compression path ``w + t * delta``, ``delta = C(w) - w``, plus its 2nd-order prediction.

    Which architecture computes the path (`on`):

    * ``"compressed"`` (default): the parameters ``w + t delta`` are written into `compressed_model` (restored
      afterwards). Its forward may differ from the original's (quantized activations, masks, extra buffers),
      so t = 1 reproduces ``evaluate(compressed_model)`` exactly, and t = 0 is the ORIGINAL weights run
      through the compressed architecture: it equals the original's loss when compression only changes
      weights; otherwise ``meta["architecture_gap"]`` (loss at t = 0 minus the original's loss) is the part
      of the damage due to the forward (e.g. activation quantization), and ``loss[t=1] - loss[t=0]`` the part
      due to the weights. If the compressed modules re-quantize their weights inside forward, the path is a
      staircase; use ``on="original"`` to see the smooth weight-space path.
    * ``"original"``: written into `model`: t = 0 reproduces the original's loss exactly, t = 1 is the
      compressed weights in the original architecture (full-precision activations).

    With ``buffers=True`` the floating-point buffers of both models (BatchNorm running statistics, e.g.
    re-estimated after pruning or shifted by a folded compensation offset) move along the path too, from the
    original's at t = 0 to the compressed model's at t = 1 (``--dir_type states`` in Li et al.'s code); with
    False (default) `on`'s own buffers are used all along.

    The prediction ``predicted(t) = loss[t=0] + t g.delta + t^2/2 delta.H.delta`` uses g and H delta of the
    ORIGINAL model at w (autograd, one HVP) and is a model of the weight part of the loss change.

    Returns:
        :class:`PathResult`; ``t`` is ``linspace(*t_range, steps)`` with 0 and 1 always on it.
    """
    target = _path_targets(model, compressed_model, on)
    lo, hi = (float(v) for v in t_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"t_range must be (low, high) with low < high, got {t_range!r}")
    if int(steps) != steps or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    t = with_points(np.linspace(lo, hi, int(steps)), (0.0, 1.0))
    delta = compression_delta(model, compressed_model)
    loss_orig, acc_orig = evaluate(model, batches, loss_fn)
    loss_comp, acc_comp = evaluate(compressed_model, batches, loss_fn)
    loss, acc, timing, n_examples = _grid_along(model, compressed_model, target, batches, loss_fn, delta, None,
                                                t, np.zeros(1), buffers)
    loss, acc = loss[:, 0], acc[:, 0]
    i0, i1 = int(np.flatnonzero(t == 0.0)[0]), int(np.flatnonzero(t == 1.0)[0])
    meta: dict[str, Any] = {
        **model_info(model), "kind": "compression_path", "on": on, "buffers": bool(buffers), "steps": int(steps),
        "t_range": [lo, hi],
        "compressed_model": model_info(compressed_model)["model"], "delta_norm": direction_norm(delta),
        "weight_norm": direction_norm({n: p.detach() for n, p in model.named_parameters()}),
        "loss_original": loss_orig, "accuracy_original": acc_orig,
        "loss_compressed": loss_comp, "accuracy_compressed": acc_comp,
        "architecture_gap": float(loss[i0] - loss_orig), "measured_jump": float(loss[i1] - loss[i0]),
        "n_examples": n_examples, "timing": timing,
    }
    if meta["delta_norm"] == 0.0:
        meta["warning"] = ("the compressed model's parameters equal the original's: the compression happens "
                           "inside its forward, so the weight path is a single point")
    predicted = np.full_like(t, np.nan)
    if second_order:
        so = second_order_terms(model, batches, delta, loss_fn)
        gd, dhd = so["grad_dot_delta"], so["delta_H_delta"]
        predicted = loss[i0] + t * gd + 0.5 * t ** 2 * dhd
        meta.update(grad_dot_delta=gd, delta_H_delta=dhd, predicted_jump=gd + 0.5 * dhd)
    return PathResult(t, loss, acc, predicted, i0, i1, meta)


def compression_plane(model: nn.Module, compressed_model: nn.Module, batches: Any, steps: int = 21,
                      distance: float = 2.0, seed: int = 0, loss_fn: LossFn = F.cross_entropy,
                      ignore: str | None = "biasbn", on: str = "compressed", buffers: bool = False) -> PlaneResult:
    """The plane spanned by ``delta = C(w) - w`` (alpha, not normalized: the compressed point is (1, 0))
    and a filter-normalized random direction rescaled to ``||delta||`` (beta).

    Grid: ``linspace(-distance, distance, steps)`` on both axes, with alpha = 1 added if not on it.
    ``on`` and ``buffers`` choose the architecture and buffers that compute the loss, as in
    :func:`compression_path`; the point (1, 0) is evaluated at exactly the compressed parameters.
    ``meta["mark"]`` marks the compressed point.
    """

    target = _path_targets(model, compressed_model, on)
    betas = symmetric_axis(distance, steps)
    alphas = with_points(betas, (0.0, 1.0))
    delta = compression_delta(model, compressed_model)
    dn = direction_norm(delta)
    eta = random_direction(model, seed, "filter", ignore)
    en = direction_norm(eta)
    eta = {n: v * (dn / en if en > 0 else 0.0) for n, v in eta.items()}
    loss, acc, timing, n_examples = _grid_along(model, compressed_model, target, batches, loss_fn, delta, eta,
                                                alphas, betas, buffers)
    meta = {**model_info(model), "kind": "compression_plane", "on": on, "buffers": bool(buffers), "steps": int(steps),
            "distance": float(distance), "seed": int(seed), "ignore": ignore, "delta_norm": dn,
            "direction_cosine": direction_dot(delta, eta) / max(dn * direction_norm(eta), 1e-300),
            "compressed_model": model_info(compressed_model)["model"],
            "mark": {"alpha": 1.0, "beta": 0.0, "label": "compressed"},
            "origin": {"alpha": 0.0, "beta": 0.0, "label": "original"},
            "axes": {"alpha": "C(w) - w", "beta": "random (filter-normalized, scaled to ||C(w) - w||)"},
            "n_examples": n_examples, "timing": timing}
    return PlaneResult(alphas, betas, loss, acc, meta)
