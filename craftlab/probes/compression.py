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
from collections.abc import Mapping, Sequence
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
    evaluate_line_and_plane,
    known_points,
    model_info,
    named_params,
    symmetric_axis,
    with_points,
)
from ._probe import LossFn, inner, on_device, preserved, probing
from .directions import random_direction
from .hessian import HessianOperator
from .results import PathResult, PlaneResult

__all__ = ["compression_delta", "compression_path", "compression_plane", "compression_slices", "second_order_terms"]


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
    def grid(ev: Evaluator, targets: list, w: list, d: list, e: list | None, anchors: dict) -> tuple:
        return evaluate_grid(ev, targets, w, d, e, alphas, betas, anchors=anchors)

    loss, acc, timing, n = _along(model, compressed_model, target, batches, loss_fn, delta, eta, buffers, grid)
    return loss, acc, timing, n


def _along(model: nn.Module, compressed_model: nn.Module, target: nn.Module, batches: Any, loss_fn: LossFn,
           delta: Direction, eta: Direction | None, buffers: bool, grid: Any) -> tuple:
    """``grid(evaluator, targets, w, delta, eta, anchors)`` on the tensors :func:`_grid_along` describes;
    returns its outputs and the number of examples."""
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
        out = grid(ev, targets, w, d, e, {0.0: w, 1.0: c})
    return (*out, ev.n)

def _path_axis(t_range: tuple[float, float], steps: int) -> tuple[np.ndarray, float, float]:
    lo, hi = (float(v) for v in t_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"t_range must be (low, high) with low < high, got {t_range!r}")
    if int(steps) != steps or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    return with_points(np.linspace(lo, hi, int(steps)), (0.0, 1.0)), lo, hi


def _path_result(model: nn.Module, compressed_model: nn.Module, t: np.ndarray, loss: np.ndarray, acc: np.ndarray,
                 ends: tuple[float, float, float, float], so: Mapping[str, float] | None, **meta: Any) -> PathResult:
    """The :class:`PathResult` of measured points; `ends` = the original's and the compressed model's (loss,
    accuracy); `so` the second-order terms (None: no prediction)."""
    loss_orig, acc_orig, loss_comp, acc_comp = ends
    i0, i1 = int(np.flatnonzero(t == 0.0)[0]), int(np.flatnonzero(t == 1.0)[0])
    out: dict[str, Any] = {
        **model_info(model), "kind": "compression_path", **meta,
        "compressed_model": model_info(compressed_model)["model"],
        "weight_norm": direction_norm({n: p.detach() for n, p in model.named_parameters()}),
        "loss_original": loss_orig, "accuracy_original": acc_orig,
        "loss_compressed": loss_comp, "accuracy_compressed": acc_comp,
        "architecture_gap": float(loss[i0] - loss_orig), "measured_jump": float(loss[i1] - loss[i0]),
    }
    if out["delta_norm"] == 0.0:
        out["warning"] = ("the compressed model's parameters equal the original's: the compression happens "
                          "inside its forward, so the weight path is a single point")
    predicted = np.full_like(t, np.nan)
    if so is not None:
        gd, dhd = so["grad_dot_delta"], so["delta_H_delta"]
        predicted = loss[i0] + t * gd + 0.5 * t ** 2 * dhd
        out.update(grad_dot_delta=gd, delta_H_delta=dhd, predicted_jump=gd + 0.5 * dhd)
    return PathResult(t, loss, acc, predicted, i0, i1, out)


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
    :func:`compression_slices` computes this path and :func:`compression_plane` in one pass.

    Returns:
        :class:`PathResult`; ``t`` is ``linspace(*t_range, steps)`` with 0 and 1 always on it.
    """
    target = _path_targets(model, compressed_model, on)
    t, lo, hi = _path_axis(t_range, steps)
    delta = compression_delta(model, compressed_model)
    ends = (*evaluate(model, batches, loss_fn), *evaluate(compressed_model, batches, loss_fn))
    loss, acc, timing, n_examples = _grid_along(model, compressed_model, target, batches, loss_fn, delta, None,
                                                t, np.zeros(1), buffers)
    so = second_order_terms(model, batches, delta, loss_fn) if second_order else None
    return _path_result(model, compressed_model, t, loss[:, 0], acc[:, 0], ends, so, on=on, buffers=bool(buffers),
                        steps=int(steps), t_range=[lo, hi], delta_norm=direction_norm(delta), n_examples=n_examples,
                        timing=timing)


def _plane_direction(model: nn.Module, delta: Direction, seed: int, ignore: str | None) -> Direction:
    """The plane's second axis: a filter-normalized random direction rescaled to ``||delta||``."""
    dn = direction_norm(delta)
    eta = random_direction(model, seed, "filter", ignore)
    en = direction_norm(eta)
    return {n: v * (dn / en if en > 0 else 0.0) for n, v in eta.items()}


def _plane_result(model: nn.Module, compressed_model: nn.Module, alphas: np.ndarray, betas: np.ndarray,
                  loss: np.ndarray, acc: np.ndarray, delta: Direction, eta: Direction, **meta: Any) -> PlaneResult:
    dn = direction_norm(delta)
    out = {**model_info(model), "kind": "compression_plane", **meta, "delta_norm": dn,
           "direction_cosine": direction_dot(delta, eta) / max(dn * direction_norm(eta), 1e-300),
           "compressed_model": model_info(compressed_model)["model"],
           "mark": {"alpha": 1.0, "beta": 0.0, "label": "compressed"},
           "origin": {"alpha": 0.0, "beta": 0.0, "label": "original"},
           "axes": {"alpha": "C(w) - w", "beta": "random (filter-normalized, scaled to ||C(w) - w||)"}}
    return PlaneResult(alphas, betas, loss, acc, out)


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
    eta = _plane_direction(model, delta, seed, ignore)
    loss, acc, timing, n_examples = _grid_along(model, compressed_model, target, batches, loss_fn, delta, eta,
                                                alphas, betas, buffers)
    return _plane_result(model, compressed_model, alphas, betas, loss, acc, delta, eta, on=on, buffers=bool(buffers),
                         steps=int(steps), distance=float(distance), seed=int(seed), ignore=ignore,
                         n_examples=n_examples, timing=timing)


def _check_reuse(reuse: Sequence[Any], on: str, buffers: bool, seed: int, ignore: str | None, dn: float,
                 n_examples: int) -> None:
    for r in reuse:
        m = getattr(r, "meta", None) or {}
        want = {"on": on, "buffers": bool(buffers), "delta_norm": dn, "n_examples": n_examples}
        if m.get("kind") == "compression_plane":
            want.update(seed=int(seed), ignore=ignore)
        elif m.get("kind") != "compression_path":
            raise ValueError(f"reuse takes compression_path / compression_plane results, got {m.get('kind')!r}")
        bad = {k: (m.get(k), v) for k, v in want.items() if m.get(k) != v}
        if bad:
            raise ValueError(f"a result in reuse was computed otherwise (theirs, these): {bad}")


def compression_slices(model: nn.Module, compressed_model: nn.Module, batches: Any, path_steps: int = 41,
                       plane_steps: int = 21, t_range: tuple[float, float] = (-0.5, 1.5), distance: float = 2.0,
                       seed: int = 0, loss_fn: LossFn = F.cross_entropy, ignore: str | None = "biasbn",
                       on: str = "compressed", buffers: bool = False, second_order: bool = True,
                       reuse: Sequence[PathResult | PlaneResult] = ()) -> tuple[PathResult, PlaneResult]:
    """:func:`compression_path` (`path_steps`, `t_range`) and :func:`compression_plane` (`plane_steps`,
    `distance`, `seed`) of the same models in one pass: the same values, bit for bit, for fewer forward passes.

    The path is the plane's beta = 0 line, so a point both need is evaluated once, and the model whose loss
    the path reports beside the grid (the compressed one for ``on="compressed"``) is read off the grid.
    `reuse` takes earlier paths / planes of the SAME models, batches and `loss_fn` (e.g. a coarser level of a
    landscape): their points are not evaluated again (matched by exact coordinates), nor their second-order
    terms and the original's loss; a result computed with another `on`, `buffers`, `seed`, `ignore`, delta or
    batch size is refused. ``meta["timing"]`` (shared by both results) counts the forward passes
    (``points``) and the points reused (``reused``).

    Example::

        >>> path, plane = compression_slices(model, pruned, probe, path_steps=21, plane_steps=13,
        ...                                  distance=1.5)  # doctest: +SKIP
        >>> fine = compression_slices(model, pruned, probe, 41, 25, reuse=(path, plane))  # doctest: +SKIP
    """
    target = _path_targets(model, compressed_model, on)
    t, lo, hi = _path_axis(t_range, path_steps)
    betas = symmetric_axis(distance, plane_steps)
    alphas = with_points(betas, (0.0, 1.0))
    delta = compression_delta(model, compressed_model)
    dn = direction_norm(delta)
    n_examples = sum(len(y) for _, y in on_device(batches, model))
    _check_reuse(reuse, on, buffers, seed, ignore, dn, n_examples)
    eta = _plane_direction(model, delta, seed, ignore)
    known = known_points(*reuse)

    def grid(ev: Evaluator, targets: list, w: list, d: list, e: list | None, anchors: dict) -> tuple:
        return evaluate_line_and_plane(ev, targets, w, d, e, t, alphas, betas, anchors, known)

    p_loss, p_acc, loss, acc, timing, _ = _along(model, compressed_model, target, batches, loss_fn, delta, eta,
                                                 buffers, grid)
    paths = [r for r in reuse if isinstance(r, PathResult)]
    i1 = int(np.flatnonzero(t == 1.0)[0])
    i0 = int(np.flatnonzero(t == 0.0)[0])
    if paths:  # the original's loss beside the grid, measured before
        orig = (paths[0].meta["loss_original"], paths[0].meta["accuracy_original"])
        comp = (paths[0].meta["loss_compressed"], paths[0].meta["accuracy_compressed"])
    else:
        orig = (float(p_loss[i0]), float(p_acc[i0])) if on == "original" else evaluate(model, batches, loss_fn)
        comp = (float(p_loss[i1]), float(p_acc[i1])) if on == "compressed" else evaluate(compressed_model, batches,
                                                                                          loss_fn)
    so = None
    if second_order:
        prior = [r.meta for r in paths if "grad_dot_delta" in r.meta]
        so = prior[0] if prior else second_order_terms(model, batches, delta, loss_fn)
    path = _path_result(model, compressed_model, t, p_loss, p_acc, (*orig, *comp), so, on=on, buffers=bool(buffers),
                        steps=int(path_steps), t_range=[lo, hi], delta_norm=dn, n_examples=n_examples, timing=timing)
    plane = _plane_result(model, compressed_model, alphas, betas, loss, acc, delta, eta, on=on,
                          buffers=bool(buffers), steps=int(plane_steps), distance=float(distance), seed=int(seed),
                          ignore=ignore, n_examples=n_examples, timing=timing)
    return path, plane
