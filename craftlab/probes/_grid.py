"""The evaluation engine of the landscape probes (:mod:`.landscape`, :mod:`.compression`): the loss and
accuracy of a model on fixed batches, evaluated on grids of weights written in place.

Grids are evaluated by writing parameters in place (``torch._foreach_copy_`` / ``torch._foreach_add_``
from precomputed tensors, no model copies) with forward passes under ``torch.inference_mode()``; the
per-point overhead is a couple of memory passes over the parameters, small next to a forward pass. The
returned timing says where the time went.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._probe import LossFn, math_attention, mean_loss, on_device, preserved

Direction = dict[str, torch.Tensor]


class Evaluator:
    """Mean loss and accuracy of `model` on fixed batches, one forward per batch, no autograd."""

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn):
        self.model, self.batches, self.loss_fn = model, batches, loss_fn
        self.n = sum(len(y) for _, y in batches)
        self.forward_s = 0.0

    def __call__(self) -> tuple[float, float]:
        correct, counted = 0, 0

        def loss_and_accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            nonlocal correct, counted
            if out.ndim == 2 and not y.is_floating_point():
                correct += int((out.argmax(1) == y).sum())
                counted += len(y)
            return self.loss_fn(out, y)

        t0 = time.perf_counter()
        with torch.inference_mode():
            loss = float(mean_loss(self.model, self.batches, loss_and_accuracy))
        self.forward_s += time.perf_counter() - t0
        return loss, (correct / counted if counted else float("nan"))


def evaluate(model: nn.Module, batches: Any, loss_fn: LossFn = F.cross_entropy) -> tuple[float, float]:
    """(mean loss, top-1 accuracy in [0, 1]) of `model` in eval mode on `batches`; the model is left untouched.

    Uses the exact code path of the landscape grids, so ``line(...).loss[centre]`` equals this bit for bit.
    """
    with preserved(model):
        return Evaluator(model, on_device(batches, model), loss_fn)()


def symmetric_axis(distance: float, steps: int) -> np.ndarray:
    """Symmetric grid ``linspace(-distance, distance, steps)`` with an exact 0 centre for odd steps."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(distance, (int, float)) and math.isfinite(distance) and distance > 0):
        raise ValueError(f"distance must be a positive finite number, got {distance!r}")
    steps = int(steps)
    if steps == 1:
        return np.zeros(1)
    a = np.linspace(-float(distance), float(distance), steps)
    a = (a - a[::-1]) / 2.0  # exactly antisymmetric
    if steps % 2:
        a[steps // 2] = 0.0
    return a


def with_points(axis: np.ndarray, points: Sequence[float]) -> np.ndarray:
    """`axis` with each of `points` on it: snapped when within 1e-9 of a grid value, inserted otherwise."""
    axis = np.asarray(axis, dtype=float).copy()
    span = float(np.ptp(axis)) if len(axis) > 1 else 1.0
    for p in points:
        k = int(np.argmin(np.abs(axis - p)))
        if abs(axis[k] - p) <= 1e-9 * max(span, 1.0):
            axis[k] = p
        else:
            axis = np.sort(np.append(axis, p))
    return axis


def evaluate_grid(evaluator: Evaluator, targets: list[torch.Tensor], base: list[torch.Tensor],
                  d1: list[torch.Tensor], d2: list[torch.Tensor] | None, alphas: np.ndarray, betas: np.ndarray,
                  anchors: Mapping[float, list[torch.Tensor]] | None = None, skip: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Evaluate ``base + a * d1 + b * d2`` written into `targets` for every (a, b).

    `anchors` maps an alpha to exact tensors for ``base + alpha * d1`` (e.g. the compressed weights at 1.0),
    so such points are evaluated at exactly those values, free of rounding. `skip` (booleans shaped like the
    grid) marks points not to evaluate (left NaN). Returns (loss, accuracy, timing), arrays of shape
    (len(alphas), len(betas)).
    """
    anchors = dict(anchors or {})
    loss = np.full((len(alphas), len(betas)), np.nan)
    acc = np.full_like(loss, np.nan)
    skip = np.zeros(loss.shape, bool) if skip is None else np.asarray(skip, bool)
    write_s = 0.0
    t_start = time.perf_counter()
    evaluator.forward_s = 0.0
    with torch.inference_mode():
        for i, a in enumerate(alphas):
            if skip[i].all():
                continue
            t0 = time.perf_counter()
            a = float(a)
            if a in anchors:
                row = anchors[a]
            elif a == 0.0:
                row = base
            else:
                row = torch._foreach_add(base, d1, alpha=a)
            write_s += time.perf_counter() - t0
            for j, b in enumerate(betas):
                if skip[i, j]:
                    continue
                t0 = time.perf_counter()
                torch._foreach_copy_(targets, row)
                if d2 is not None and float(b) != 0.0:
                    torch._foreach_add_(targets, d2, alpha=float(b))
                write_s += time.perf_counter() - t0
                loss[i, j], acc[i, j] = evaluator()
    total = time.perf_counter() - t_start
    timing = {"total_s": total, "forward_s": evaluator.forward_s, "write_s": write_s,
              "other_s": max(total - evaluator.forward_s - write_s, 0.0), "points": int((~skip).sum())}
    return loss, acc, timing


Known = Mapping[tuple[float, float], tuple[float, float]]
"""(alpha, beta) -> (loss, accuracy) of points already evaluated on the same models, batches and directions."""


def evaluate_line_and_plane(evaluator: Evaluator, targets: list[torch.Tensor], base: list[torch.Tensor],
                            d1: list[torch.Tensor], d2: list[torch.Tensor], line_alphas: np.ndarray,
                            alphas: np.ndarray, betas: np.ndarray,
                            anchors: Mapping[float, list[torch.Tensor]] | None = None, known: Known | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """The line ``base + a * d1`` (a in `line_alphas`) and the plane ``base + a * d1 + b * d2`` in one pass of
    :func:`evaluate_grid`: a point both need is evaluated once, and the points in `known` not at all (their
    values are taken as given). Each point is computed by the same operations as in two separate grids, so the
    values equal theirs bit for bit. Returns (line loss, line accuracy, plane loss, plane accuracy, timing);
    ``timing["points"]`` counts the forward passes, ``timing["reused"]`` the known points used."""
    all_a, all_b = np.union1d(line_alphas, alphas), np.union1d(betas, [0.0])
    ia = {float(a): i for i, a in enumerate(all_a)}
    ib = {float(b): j for j, b in enumerate(all_b)}
    rows, cols, zero = [ia[float(a)] for a in alphas], [ib[float(b)] for b in betas], ib[0.0]
    line_rows = [ia[float(a)] for a in line_alphas]
    need = np.zeros((len(all_a), len(all_b)), bool)
    need[np.ix_(rows, cols)] = True
    need[line_rows, zero] = True
    got = {(ia[a], ib[b]): v for (a, b), v in (known or {}).items()
           if a in ia and b in ib and need[ia[a], ib[b]]}
    skip = ~need
    for ij in got:
        skip[ij] = True
    loss, acc, timing = evaluate_grid(evaluator, targets, base, d1, d2, all_a, all_b, anchors, skip)
    for (i, j), (lv, av) in got.items():
        loss[i, j], acc[i, j] = lv, av
    timing["reused"] = len(got)
    return (loss[line_rows, zero], acc[line_rows, zero], loss[np.ix_(rows, cols)], acc[np.ix_(rows, cols)],
            timing)


def known_points(*results: Any) -> dict[tuple[float, float], tuple[float, float]]:
    """(alpha, beta) -> (loss, accuracy) of earlier line / path / plane results: a line's or path's points lie
    at beta = 0. The caller vouches that they were computed on the same models, batches and directions."""
    out: dict[tuple[float, float], tuple[float, float]] = {}
    for r in results:
        if hasattr(r, "betas"):
            for i, a in enumerate(r.alphas):
                for j, b in enumerate(r.betas):
                    out[(float(a), float(b))] = (float(r.loss[i, j]), float(r.accuracy[i, j]))
        else:
            xs = r.t if hasattr(r, "t") else r.alphas
            for i, a in enumerate(xs):
                out[(float(a), 0.0)] = (float(r.loss[i]), float(r.accuracy[i]))
    return {k: v for k, v in out.items() if np.isfinite(v[0])}


def evaluate_grid_batched(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn,
                          names: list[str], base: list[torch.Tensor], d1: list[torch.Tensor],
                          d2: list[torch.Tensor] | None, alphas: np.ndarray, betas: np.ndarray, points: int,
                          anchors: Mapping[float, list[torch.Tensor]] | None = None
                          ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """:func:`evaluate_grid` with `points` grid points per forward pass: their weights stacked and run through
    ``torch.vmap(torch.func.functional_call)`` (the model's own parameters are not written). Each point's
    weights are computed by the same operations as in the loop, so the two agree to rounding in the batched
    kernels (tested to 1e-6). On one CPU thread the batched kernels are not faster (see benchmarks/RESULTS.md);
    on a GPU, batching small models' forwards is the point."""
    from torch.func import functional_call

    anchors = dict(anchors or {})
    loss = np.full((len(alphas), len(betas)), np.nan)
    acc = np.full_like(loss, np.nan)
    buffers = dict(model.named_buffers())
    n_total = sum(len(y) for _, y in batches)
    grid = [(i, j) for i in range(len(alphas)) for j in range(len(betas))]
    write_s = forward_s = 0.0
    t_start = time.perf_counter()

    def loss_and_correct(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        total, correct = 0.0, 0
        for x, y in batches:
            out = functional_call(model, {**params, **buffers}, (x,))
            total = total + loss_fn(out, y) * len(y)
            if out.ndim == 2 and not y.is_floating_point():
                correct = correct + (out.argmax(1) == y).sum()
        return total / n_total, torch.as_tensor(correct)

    with torch.inference_mode():
        rows: dict[int, list[torch.Tensor]] = {}
        for start in range(0, len(grid), points):
            chunk = grid[start:start + points]
            t0 = time.perf_counter()
            weights = []
            for i, j in chunk:
                a, b = float(alphas[i]), float(betas[j])
                if i not in rows:  # one row of alphas at a time, as the loop
                    row = anchors[a] if a in anchors else base if a == 0.0 else torch._foreach_add(base, d1, alpha=a)
                    rows = {i: row}
                w = rows[i] if d2 is None or b == 0.0 else torch._foreach_add(rows[i], d2, alpha=b)
                weights.append(w)
            stacked = {n: torch.stack([w[k] for w in weights]) for k, n in enumerate(names)}
            write_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            with math_attention():  # the fused CPU attention kernel has no batching rule (vmap would loop)
                losses, correct = torch.vmap(loss_and_correct)(stacked)
            forward_s += time.perf_counter() - t0
            counted = n_total if any(y.ndim == 1 and not y.is_floating_point() for _, y in batches) else 0
            for (i, j), lv, c in zip(chunk, losses.tolist(), correct.tolist()):
                loss[i, j], acc[i, j] = lv, (c / counted if counted else float("nan"))
    total = time.perf_counter() - t_start
    timing = {"total_s": total, "forward_s": forward_s, "write_s": write_s,
              "other_s": max(total - forward_s - write_s, 0.0), "points": int(loss.size), "points_per_pass": points}
    return loss, acc, timing


def named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> parameter."""
    return dict(model.named_parameters())


def direction_norm(direction: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a direction over all its tensors (float64)."""
    return float(math.sqrt(sum(float(d.double().pow(2).sum()) for d in direction.values())))


def direction_dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Inner product of two directions over their common names (float64)."""
    return float(sum(float((a[n].double() * b[n].double()).sum()) for n in a if n in b))


def model_info(model: nn.Module) -> dict[str, Any]:
    return {"model": getattr(model, "craftlab_name", type(model).__name__),
            "num_params": int(sum(p.numel() for p in model.parameters()))}


def check_same_params(a: nn.Module, b: nn.Module, what: str = "compressed_model") -> None:
    pa, pb = named_params(a), named_params(b)
    if set(pa) != set(pb):
        missing, extra = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
        raise ValueError(f"{what} must have the same parameter names as the model; missing {missing[:5]}, "
                         f"extra {extra[:5]}")
    for n in pa:
        if pa[n].shape != pb[n].shape:
            raise ValueError(f"parameter {n!r} has shape {tuple(pb[n].shape)} in {what}, {tuple(pa[n].shape)} in model")
