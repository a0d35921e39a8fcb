"""Loss landscapes: directions, 1-D lines, 2-D planes and interpolations in weight space.

The compression slices (:func:`compression_path`, :func:`compression_plane`, :func:`second_order_terms`,
:func:`compression_delta`) live in :mod:`craftlab.probes.compression` and are re-exported here, as are
the result records (:mod:`craftlab.probes.results`) and :func:`evaluate`; the conventions below hold
for all of them.

Every function evaluates the model in eval mode (BatchNorm on running statistics, no dropout)
inside :func:`craftlab.probes._probe.preserved`, so the model comes back bit-identical: parameters,
buffers, ``requires_grad``, ``.grad`` and train/eval flags.

Conventions
-----------
* A *direction* is a dict ``name -> tensor`` over (a subset of) ``model.named_parameters()``;
  missing names mean "zero along this parameter". An ``nn.Module`` may be passed instead: its
  parameters ARE the direction vector (it is not ``other - model``; use :func:`interpolate` or
  subtract yourself for that).
* Grids are symmetric: ``alphas = linspace(-distance, distance, steps)``; for odd ``steps`` the
  centre is exactly ``0.0``, so the centre of a line/plane is bit-for-bit the model's own loss.
* Plane arrays are indexed ``loss[i, j] = L(w + alphas[i] * d1 + betas[j] * d2)`` (rows = alpha,
  the first direction; columns = beta, the second).
* Losses are example-weighted means over ``batches`` (one ``(x, y)`` pair or an iterable of them),
  computed with ``loss_fn`` (cross-entropy by default); accuracy is top-1 in [0, 1] (NaN when the
  output is not (B, C) logits with integer targets).

Speed: grids are evaluated by writing parameters in place (``torch._foreach_copy_`` /
``torch._foreach_add_`` from precomputed tensors, no model copies; see :mod:`craftlab.probes._grid`)
with forward passes under ``torch.inference_mode()``; the per-point overhead is a couple of memory
passes over the parameters, small next to a forward pass. ``meta["timing"]`` says where the time went.
"""

from __future__ import annotations

import copy
import math
import time
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
    evaluate_grid_batched,
    evaluate_line_and_plane,
    known_points,
    model_info,
    named_params,
    symmetric_axis,
    with_points,
)
from ._probe import LossFn, on_device, preserved
from .compression import (
    compression_delta,
    compression_path,
    compression_plane,
    compression_slices,
    second_order_terms,
)
from .directions import (  # noqa: F401  (NORMALIZATIONS, IGNORES: re-exported)
    IGNORES,
    NORMALIZATIONS,
    DirectionLike,
    check_normalization,
    normalize_direction,
    random_direction,
    resolve_direction,
)
from .results import LineResult, PathResult, PlaneResult

__all__ = [
    "Direction",
    "LineResult",
    "PathResult",
    "PlaneResult",
    "compression_delta",
    "compression_path",
    "compression_plane",
    "compression_slices",
    "evaluate",
    "interpolate",
    "line",
    "line_and_plane",
    "normalize_direction",
    "plane",
    "random_direction",
    "second_order_terms",
]


# --------------------------------------------------------------------------------------------
# lines, planes, interpolations
# --------------------------------------------------------------------------------------------

def _check_points(batch_points: int) -> None:
    if isinstance(batch_points, bool) or not isinstance(batch_points, int) or batch_points < 1:
        raise ValueError(f"batch_points must be a positive integer, got {batch_points!r}")


def line(model: nn.Module, batches: Any, direction: DirectionLike | None = None, distance: float = 1.0,
         steps: int = 51, normalization: str | None = "filter", seed: int = 0,
         loss_fn: LossFn = F.cross_entropy, ignore: str | None = "biasbn", batch_points: int = 1) -> LineResult:
    """Loss along ``w + alpha * d`` for ``alpha in linspace(-distance, distance, steps)``.

    Args:
        direction: dict or nn.Module (its parameters are the direction vector); ``None`` draws
            ``random_direction(model, seed, normalization, ignore)``.
        normalization: applied to a given direction too; ``None`` uses the given direction as is.
        batch_points: grid points per forward pass (1: one point at a time, weights written in place; more:
            stacked weights through ``torch.vmap`` of ``functional_call``, same values to 1e-6).
    Returns:
        :class:`LineResult` with loss/accuracy of shape (steps,); the centre (odd steps) is the model's loss.
    """
    check_normalization(normalization, ignore)
    _check_points(batch_points)
    alphas = symmetric_axis(distance, steps)
    with preserved(model):
        d = resolve_direction(model, direction, normalization, ignore, torch.Generator().manual_seed(int(seed)))
        params = named_params(model)
        names = list(params)
        targets = [params[n] for n in names]
        base = [p.detach().clone() for p in targets]
        ev = Evaluator(model, on_device(batches, model), loss_fn)
        if batch_points > 1:
            loss, acc, timing = evaluate_grid_batched(model, ev.batches, loss_fn, names, base, [d[n] for n in names],
                                                      None, alphas, np.zeros(1), batch_points)
        else:
            loss, acc, timing = evaluate_grid(ev, targets, base, [d[n] for n in names], None, alphas, np.zeros(1))
    meta = {**model_info(model), "kind": "line", "distance": float(distance), "steps": int(steps),
            "normalization": normalization, "ignore": ignore, "seed": int(seed), "random": direction is None,
            "direction_norm": direction_norm(d), "weight_norm": direction_norm({n: b for n, b in zip(names, base)}),
            "n_examples": ev.n, "timing": timing}
    return LineResult(alphas, loss[:, 0], acc[:, 0], meta)


def plane(model: nn.Module, batches: Any, directions: Sequence[DirectionLike | None] | None = None,
          distance: float = 1.0, steps: int = 21, normalization: str | None = "filter", seed: int = 0,
          loss_fn: LossFn = F.cross_entropy, ignore: str | None = "biasbn", backend: str = "native",
          batch_points: int = 1) -> PlaneResult:
    """Loss on the grid ``w + alpha * d1 + beta * d2``, alpha and beta in ``linspace(-distance, distance, steps)``.

    Args:
        directions: ``(d1, d2)``, each a dict or an nn.Module (its parameters are the direction vector) or
            ``None`` (random). Random directions come from one generator seeded with `seed`: d1 equals
            ``random_direction(model, seed)``, d2 is the next draw.
        normalization: ``"filter"`` (Li et al.), ``"layer"`` or ``None`` (given directions used as is).
        backend: ``"native"`` (in-place parameter writes, fast) or ``"loss-landscapes"`` (the same grid
            evaluated by ``loss_landscapes.planar_interpolation`` on deep copies; for cross-checking).
        batch_points: grid points per forward pass (native backend): 1 writes the weights in place point by
            point; more stacks them through ``torch.vmap`` of ``functional_call`` (equal to 1e-6; not faster on
            one CPU thread, see benchmarks/RESULTS.md).
    Returns:
        :class:`PlaneResult`, ``loss[i, j]`` at ``(alphas[i], betas[j])``, shape (steps, steps).
    """
    check_normalization(normalization, ignore)
    _check_points(batch_points)
    if backend not in ("native", "loss-landscapes"):
        raise ValueError(f"backend must be 'native' or 'loss-landscapes', got {backend!r}")
    if directions is None:
        directions = (None, None)
    if isinstance(directions, (Mapping, nn.Module)) or len(directions) != 2:
        raise ValueError("directions must be a pair (d1, d2)")
    alphas = symmetric_axis(distance, steps)
    with preserved(model):
        gen = torch.Generator().manual_seed(int(seed))
        d1 = resolve_direction(model, directions[0], normalization, ignore, gen)
        d2 = resolve_direction(model, directions[1], normalization, ignore, gen)
        params = named_params(model)
        names = list(params)
        batch_list = on_device(batches, model)
        if backend == "native":
            targets = [params[n] for n in names]
            base = [p.detach().clone() for p in targets]
            ev = Evaluator(model, batch_list, loss_fn)
            if batch_points > 1:
                loss, acc, timing = evaluate_grid_batched(model, batch_list, loss_fn, names, base,
                                                          [d1[n] for n in names], [d2[n] for n in names], alphas,
                                                          alphas, batch_points)
            else:
                loss, acc, timing = evaluate_grid(ev, targets, base, [d1[n] for n in names], [d2[n] for n in names],
                                                  alphas, alphas)
        else:
            loss, acc, timing = _plane_loss_landscapes(model, batch_list, loss_fn, d1, d2, alphas)
    meta = {**model_info(model), "kind": "plane", "distance": float(distance), "steps": int(steps),
            "normalization": normalization, "ignore": ignore, "seed": int(seed), "backend": backend,
            "random": [d is None for d in directions], "direction_norms": [direction_norm(d1), direction_norm(d2)],
            "direction_cosine": direction_dot(d1, d2) / max(direction_norm(d1) * direction_norm(d2), 1e-300),
            "n_examples": sum(len(y) for _, y in batch_list), "timing": timing}
    return PlaneResult(alphas, alphas.copy(), loss, acc, meta)


def line_and_plane(model: nn.Module, batches: Any, line_steps: int = 51, plane_steps: int = 21, distance: float = 1.0,
                   seed: int = 0, normalization: str | None = "filter", loss_fn: LossFn = F.cross_entropy,
                   ignore: str | None = "biasbn", reuse: Sequence[LineResult | PlaneResult] = ()
                   ) -> tuple[LineResult, PlaneResult]:
    """:func:`line` (random direction, `line_steps`) and :func:`plane` (random directions, `plane_steps`) with
    the same `distance`, `seed`, `normalization` and `ignore`, in one pass: the same values, bit for bit.

    The line's direction is the plane's first one (both are the first draw of the generator seeded with
    `seed`), so the line is the plane's beta = 0 row and a point both need is evaluated once. `reuse` takes
    earlier lines / planes of the SAME model, batches and `loss_fn` (e.g. a coarser level): their points are
    not evaluated again (matched by exact coordinates); one drawn otherwise (seed, normalization, ignore,
    given directions, batch size) is refused. ``meta["timing"]`` counts the forward passes (``points``) and
    the points reused (``reused``).

    Example::

        >>> ln, pl = line_and_plane(model, probe, line_steps=21, plane_steps=13)  # doctest: +SKIP
    """
    check_normalization(normalization, ignore)
    line_alphas, alphas = symmetric_axis(distance, line_steps), symmetric_axis(distance, plane_steps)
    with preserved(model):
        gen = torch.Generator().manual_seed(int(seed))
        d1 = resolve_direction(model, None, normalization, ignore, gen)
        d2 = resolve_direction(model, None, normalization, ignore, gen)
        params = named_params(model)
        names = list(params)
        targets = [params[n] for n in names]
        base = [p.detach().clone() for p in targets]
        ev = Evaluator(model, on_device(batches, model), loss_fn)
        for r in reuse:
            m = getattr(r, "meta", None) or {}
            kind = m.get("kind")
            if kind not in ("line", "plane"):
                raise ValueError(f"reuse takes line / plane results, got {kind!r}")
            want: dict[str, Any] = {"seed": int(seed), "normalization": normalization, "ignore": ignore,
                                    "n_examples": ev.n}
            if kind == "line":
                want.update(random=True, direction_norm=direction_norm(d1))
            else:
                want.update(random=[True, True], direction_norms=[direction_norm(d1), direction_norm(d2)])
            bad = {k: (m.get(k), v) for k, v in want.items() if m.get(k) != v}
            if bad:
                raise ValueError(f"a result in reuse was computed otherwise (theirs, these): {bad}")
        l_loss, l_acc, loss, acc, timing = evaluate_line_and_plane(
            ev, targets, base, [d1[n] for n in names], [d2[n] for n in names], line_alphas, alphas, alphas,
            known=known_points(*reuse))
    common = {**model_info(model), "distance": float(distance), "normalization": normalization, "ignore": ignore,
              "seed": int(seed), "n_examples": ev.n, "timing": timing}
    ln = LineResult(line_alphas, l_loss, l_acc, {**common, "kind": "line", "steps": int(line_steps), "random": True,
                                                 "direction_norm": direction_norm(d1),
                                                 "weight_norm": direction_norm(dict(zip(names, base)))})
    pl = PlaneResult(alphas, alphas.copy(), loss, acc, {
        **common, "kind": "plane", "steps": int(plane_steps), "backend": "native", "random": [True, True],
        "direction_norms": [direction_norm(d1), direction_norm(d2)],
        "direction_cosine": direction_dot(d1, d2) / max(direction_norm(d1) * direction_norm(d2), 1e-300)})
    return ln, pl


def _plane_loss_landscapes(model: nn.Module, batch_list: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn,
                           d1: Direction, d2: Direction, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Evaluate our grid with ``loss_landscapes.planar_interpolation`` (v3.0.6) and convert its convention.

    Its convention (read in ``loss_landscapes/main.py``): with ``k = steps'`` and ``u = (m1 - m0) / k``,
    ``v = (m2 - m0) / k``, the returned ``Z[i, j]`` is at ``m0 + i u + (j + 1) v`` for EVEN rows i and at
    ``m0 + i u + j v`` for ODD rows (it walks the grid boustrophedon with in-place adds and the two
    directions of travel are off by one step). Rows run along m1 - m0, columns along m2 - m0, both one-sided
    from m0. To get our symmetric n x n grid with step h we call it with ``k = n + 1`` from the corner
    ``m0 = w - distance d1 - (distance + h) d2`` and ``m_i = m0 + k h d_i``: then even rows hold our columns
    0..n-1 at ``Z[i, :n]``, odd rows at ``Z[i, 1:]``, and row n is off-grid. Our metric knows the visiting
    order, returns NaN for the 2n + 1 off-grid points without a forward pass, and records accuracy too.

    Its side effects are confined to the deep copies (it sets ``requires_grad=False`` on them and moves their
    parameters); the copies are in eval mode (made inside ``preserved``), so BN statistics do not move. Its
    zero-bias crash lives in ``filter_normalize_``, which ``planar_interpolation`` never calls.
    """
    import loss_landscapes
    from loss_landscapes.metrics.metric import Metric

    n = len(alphas)
    k = n + 1
    h = float(alphas[1] - alphas[0]) if n > 1 else 0.0
    dist = float(-alphas[0])

    class _GridMetric(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.evaluator: Evaluator | None = None

        def __call__(self, model_wrapper: Any) -> tuple[float, float]:
            c = self.calls
            self.calls += 1
            row, pos = divmod(c, k)
            col = pos if row % 2 == 0 else k - 1 - pos  # list index in the returned row
            if row >= n or (row % 2 == 0 and col >= n) or (row % 2 == 1 and col == 0):
                return float("nan"), float("nan")
            if self.evaluator is None:
                self.evaluator = Evaluator(model_wrapper.modules[0], batch_list, loss_fn)
            return self.evaluator()

    t_start = time.perf_counter()
    copies = [copy.deepcopy(model) for _ in range(3)]
    with torch.no_grad():
        for name, p in copies[0].named_parameters():
            p.sub_(d1[name], alpha=dist).sub_(d2[name], alpha=dist + h)
        start = dict(copies[0].named_parameters())
        for m, d in ((copies[1], d1), (copies[2], d2)):
            for name, p in m.named_parameters():
                p.copy_(start[name] + (k * h) * d[name])
    metric = _GridMetric()
    z = np.asarray(loss_landscapes.planar_interpolation(copies[0], copies[1], copies[2], metric, steps=k,
                                                        deepcopy_model=False), dtype=float)
    if metric.calls != k * k or z.shape != (k, k, 2):
        raise RuntimeError(f"loss_landscapes.planar_interpolation visited {metric.calls} points, expected {k * k}: "
                           "its grid convention changed (this adapter was written for loss-landscapes 3.0.6)")
    out = np.empty((n, n, 2))
    for i in range(n):
        out[i] = z[i, :n] if i % 2 == 0 else z[i, 1:]
    total = time.perf_counter() - t_start
    fwd = metric.evaluator.forward_s if metric.evaluator is not None else 0.0
    timing = {"total_s": total, "forward_s": fwd, "write_s": None, "other_s": total - fwd,
              "points": int(n * n), "backend_points": int(k * k)}
    return out[..., 0], out[..., 1], timing


def interpolate(model_a: nn.Module, model_b: nn.Module, batches: Any, steps: int = 21, extend: float = 0.0,
                loss_fn: LossFn = F.cross_entropy, buffers: bool = True) -> LineResult:
    """Loss along ``(1 - t) a + t b`` for ``t in linspace(-extend, 1 + extend, steps)`` (t = 0 and 1 always included).

    Evaluated on `model_a`'s architecture. With ``buffers=True`` floating-point buffers (BatchNorm running
    statistics) are interpolated too, as ``--dir_type states`` in Li et al.'s code, so that t = 1 reproduces
    `model_b`'s own loss exactly; with ``False`` model_a's buffers are used all along. ``alphas`` holds t.
    """
    check_same_params(model_a, model_b, "model_b")
    if extend < 0 or not math.isfinite(extend):
        raise ValueError(f"extend must be a finite number >= 0, got {extend!r}")
    if int(steps) != steps or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    t = with_points(np.linspace(-extend, 1.0 + extend, int(steps)), (0.0, 1.0))
    with preserved(model_a), preserved(model_b):
        pa, pb = named_params(model_a), named_params(model_b)
        names = list(pa)
        targets = [pa[n] for n in names]
        wa = [pa[n].detach().clone() for n in names]
        wb = [pb[n].detach().to(dtype=pa[n].dtype, device=pa[n].device).clone() for n in names]
        if buffers:
            ba, bb = dict(model_a.named_buffers()), dict(model_b.named_buffers())
            bnames = [n for n in ba if n in bb and ba[n].is_floating_point() and ba[n].shape == bb[n].shape]
            targets += [ba[n] for n in bnames]
            wa += [ba[n].detach().clone() for n in bnames]
            wb += [bb[n].detach().to(dtype=ba[n].dtype, device=ba[n].device).clone() for n in bnames]
        diff = torch._foreach_sub(wb, wa)
        ev = Evaluator(model_a, on_device(batches, model_a), loss_fn)
        loss, acc, timing = evaluate_grid(ev, targets, wa, diff, None, t, np.zeros(1), anchors={0.0: wa, 1.0: wb})
    meta = {**model_info(model_a), "kind": "interpolation", "x": "t", "steps": int(steps), "extend": float(extend),
            "buffers": bool(buffers), "model_b": model_info(model_b)["model"],
            "distance": direction_norm({n: d for n, d in zip(names, diff)}), "n_examples": ev.n, "timing": timing}
    return LineResult(t, loss[:, 0], acc[:, 0], meta)
