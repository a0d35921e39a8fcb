"""Loss landscapes: 1-D lines, 2-D planes, interpolations and compression paths in weight space.

Every function evaluates the model in eval mode (BatchNorm on running statistics, no dropout)
inside :func:`craftlab._probe.preserved`, so the model comes back bit-identical: parameters,
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
``torch._foreach_add_`` from precomputed tensors, no model copies) with forward passes under
``torch.inference_mode()``; the per-point overhead is a couple of memory passes over the
parameters, small next to a forward pass. ``meta["timing"]`` says where the time went.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._probe import LossFn, as_batches, mean_loss, preserved

Direction = dict[str, torch.Tensor]
DirectionLike = Mapping[str, torch.Tensor] | nn.Module

NORMALIZATIONS = ("filter", "layer", None)
IGNORES = ("biasbn", None)

__all__ = [
    "Direction",
    "LineResult",
    "PathResult",
    "PlaneResult",
    "compression_delta",
    "compression_path",
    "compression_plane",
    "evaluate",
    "interpolate",
    "line",
    "normalize_direction",
    "plane",
    "random_direction",
    "second_order_terms",
]


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------

def _nan_to_none(a: np.ndarray) -> Any:
    """Array -> nested lists with NaN as None (strict JSON has no NaN)."""
    return [_nan_to_none(r) for r in a] if a.ndim > 1 else [None if not np.isfinite(v) else float(v) for v in a]


def _from_list(v: Any) -> np.ndarray:
    return np.array(v, dtype=float) if v is not None else np.array([], dtype=float)


def _jsonable(obj: Any) -> Any:
    """Make `obj` JSON-serialisable (numpy scalars/arrays, tuples, tensors, non-finite floats)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _nan_to_none(obj.astype(float)) if obj.ndim else _jsonable(obj.item())
    if torch.is_tensor(obj):
        return _jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


@dataclass
class LineResult:
    """A 1-D slice ``L(w + alpha * d)`` (or an interpolation, where ``alphas`` is ``t``).

    Attributes:
        alphas: (steps,) step sizes along the direction (units of the direction vector).
        loss: (steps,) mean loss at each alpha.
        accuracy: (steps,) top-1 accuracy in [0, 1] at each alpha.
        meta: JSON-able details (seed, normalization, direction norms, timing, ...).
    """

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "line"

    @property
    def centre_index(self) -> int:
        """Index of the alpha closest to 0."""
        return int(np.argmin(np.abs(self.alphas)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN stored as null)."""
        return {"kind": self.kind, "alphas": _nan_to_none(np.asarray(self.alphas, float)),
                "loss": _nan_to_none(np.asarray(self.loss, float)),
                "accuracy": _nan_to_none(np.asarray(self.accuracy, float)), "meta": _jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LineResult:
        """Inverse of :meth:`to_dict`."""
        return cls(_from_list(d["alphas"]), _from_list(d["loss"]), _from_list(d["accuracy"]), dict(d.get("meta", {})))


@dataclass
class PlaneResult:
    """A 2-D slice ``L(w + alpha * d1 + beta * d2)``.

    Attributes:
        alphas: (n,) steps along the first direction (rows).
        betas: (m,) steps along the second direction (columns).
        loss: (n, m) mean loss, ``loss[i, j]`` at ``(alphas[i], betas[j])``.
        accuracy: (n, m) top-1 accuracy in [0, 1].
        meta: JSON-able details; ``meta["mark"]`` (if any) is ``{"alpha", "beta", "label"}``.
    """

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "plane"

    @property
    def centre_index(self) -> tuple[int, int]:
        """(i, j) of the grid point closest to (0, 0)."""
        return int(np.argmin(np.abs(self.alphas))), int(np.argmin(np.abs(self.betas)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN stored as null)."""
        return {"kind": self.kind, "alphas": _nan_to_none(np.asarray(self.alphas, float)),
                "betas": _nan_to_none(np.asarray(self.betas, float)),
                "loss": _nan_to_none(np.asarray(self.loss, float)),
                "accuracy": _nan_to_none(np.asarray(self.accuracy, float)), "meta": _jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlaneResult:
        """Inverse of :meth:`to_dict`."""
        return cls(_from_list(d["alphas"]), _from_list(d["betas"]), _from_list(d["loss"]),
                   _from_list(d["accuracy"]), dict(d.get("meta", {})))


@dataclass
class PathResult:
    """Loss along the compression path ``w + t * delta`` with ``delta = C(w) - w``.

    Attributes:
        t: (n,) path positions; ``t[index_original] == 0.0`` and ``t[index_compressed] == 1.0`` exactly.
        loss: (n,) measured mean loss.
        accuracy: (n,) measured top-1 accuracy in [0, 1].
        predicted: (n,) second-order prediction ``loss[index_original] + t g.delta + t^2/2 delta.H.delta``
            (NaN when ``second_order=False``).
        index_original: index of t = 0 (the original weights).
        index_compressed: index of t = 1 (the compressed weights).
        meta: JSON-able details (``grad_dot_delta``, ``delta_H_delta``, ``delta_norm``, losses of both models, ...).
    """

    t: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    predicted: np.ndarray
    index_original: int
    index_compressed: int
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "compression_path"

    @property
    def predicted_delta(self) -> np.ndarray:
        """(n,) predicted loss change ``t g.delta + t^2/2 delta.H.delta``."""
        return self.predicted - self.loss[self.index_original]

    @property
    def measured_delta(self) -> np.ndarray:
        """(n,) measured loss change relative to t = 0."""
        return self.loss - self.loss[self.index_original]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN stored as null)."""
        return {"kind": self.kind, "t": _nan_to_none(np.asarray(self.t, float)),
                "loss": _nan_to_none(np.asarray(self.loss, float)),
                "accuracy": _nan_to_none(np.asarray(self.accuracy, float)),
                "predicted": _nan_to_none(np.asarray(self.predicted, float)),
                "index_original": int(self.index_original), "index_compressed": int(self.index_compressed),
                "meta": _jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PathResult:
        """Inverse of :meth:`to_dict`."""
        return cls(_from_list(d["t"]), _from_list(d["loss"]), _from_list(d["accuracy"]), _from_list(d["predicted"]),
                   int(d["index_original"]), int(d["index_compressed"]), dict(d.get("meta", {})))


# --------------------------------------------------------------------------------------------
# evaluation engine
# --------------------------------------------------------------------------------------------

def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prepare_batches(model: nn.Module, batches: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dev = _device(model)
    return [(x.to(dev), y.to(dev)) for x, y in as_batches(batches)]


class _Evaluator:
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
        return _Evaluator(model, _prepare_batches(model, batches), loss_fn)()


def _axis(distance: float, steps: int) -> np.ndarray:
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


def _with_points(axis: np.ndarray, points: Sequence[float]) -> np.ndarray:
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


def _grid(evaluator: _Evaluator, targets: list[torch.Tensor], base: list[torch.Tensor],
          d1: list[torch.Tensor], d2: list[torch.Tensor] | None, alphas: np.ndarray, betas: np.ndarray,
          anchors: Mapping[float, list[torch.Tensor]] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Evaluate ``base + a * d1 + b * d2`` written into `targets` for every (a, b).

    `anchors` maps an alpha to exact tensors for ``base + alpha * d1`` (e.g. the compressed weights at 1.0),
    so such points are evaluated at exactly those values, free of rounding. Returns (loss, accuracy, timing),
    arrays of shape (len(alphas), len(betas)).
    """
    anchors = dict(anchors or {})
    loss = np.full((len(alphas), len(betas)), np.nan)
    acc = np.full_like(loss, np.nan)
    write_s = 0.0
    t_start = time.perf_counter()
    evaluator.forward_s = 0.0
    with torch.inference_mode():
        for i, a in enumerate(alphas):
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
                t0 = time.perf_counter()
                torch._foreach_copy_(targets, row)
                if d2 is not None and float(b) != 0.0:
                    torch._foreach_add_(targets, d2, alpha=float(b))
                write_s += time.perf_counter() - t0
                loss[i, j], acc[i, j] = evaluator()
    total = time.perf_counter() - t_start
    timing = {"total_s": total, "forward_s": evaluator.forward_s, "write_s": write_s,
              "other_s": max(total - evaluator.forward_s - write_s, 0.0), "points": int(loss.size)}
    return loss, acc, timing


def _params(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


# --------------------------------------------------------------------------------------------
# directions
# --------------------------------------------------------------------------------------------

def _check(normalization: str | None, ignore: str | None) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if ignore not in IGNORES:
        raise ValueError(f"ignore must be one of {IGNORES}, got {ignore!r}")


def normalize_direction(direction: Mapping[str, torch.Tensor], model: nn.Module, normalization: str | None = "filter",
                        ignore: str | None = "biasbn") -> Direction:
    """Rescale `direction` to the scale of `model`'s weights (Li et al. 2018); returns a new dict.

    * ``"filter"``: for every parameter with ndim >= 2, each filter ``d[k]`` (slice along dim 0, i.e. one
      output row / conv filter) is rescaled to ``||w[k]|| / ||d[k]||``; an all-zero weight filter (or
      direction filter) gives an all-zero direction filter, never NaN.
    * ``"layer"``: the whole tensor is rescaled to ``||w|| / ||d||``.
    * ``None``: no rescaling.
    1-D (and 0-D) parameters - biases, norm-layer scales/shifts - are zeroed when ``ignore="biasbn"``
    (the paper's default), else rescaled as a whole to the parameter's norm (when normalizing).
    """
    _check(normalization, ignore)
    params = _params(model)
    out: Direction = {}
    for name, d in direction.items():
        w = params[name].detach()
        d = d.detach().to(device=w.device, dtype=w.dtype).clone()
        if w.ndim <= 1:
            if ignore == "biasbn":
                d.zero_()
            elif normalization is not None:
                d.mul_(_safe_ratio(w.norm(), d.norm()))
        elif normalization == "filter":
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            d.mul_(_safe_ratio(wn, dn).reshape(-1, *([1] * (d.ndim - 1))))
        elif normalization == "layer":
            d.mul_(_safe_ratio(w.norm(), d.norm()))
        out[name] = d
    return out


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den == 0 (an all-zero direction filter stays zero)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _gaussian(model: nn.Module, gen: torch.Generator) -> Direction:
    """N(0, 1) tensors shaped like the parameters, drawn on CPU (same numbers on any device)."""
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
            for n, p in model.named_parameters()}


def random_direction(model: nn.Module, seed: int = 0, normalization: str | None = "filter",
                     ignore: str | None = "biasbn") -> Direction:
    """A Gaussian random direction ``name -> tensor`` (shapes of the parameters), normalized per Li et al. 2018.

    See :func:`normalize_direction` for ``normalization`` and ``ignore``; ``ignore="biasbn"`` zeroes 1-D
    parameters whatever the normalization. The numbers depend only on `seed` and the parameter shapes.
    """
    _check(normalization, ignore)
    gen = torch.Generator().manual_seed(int(seed))
    return normalize_direction(_gaussian(model, gen), model, normalization, ignore)


def _as_direction(direction: DirectionLike, model: nn.Module) -> Direction:
    """A dict over all of `model`'s parameters (missing names -> zeros); validates names and shapes."""
    params = _params(model)
    if isinstance(direction, nn.Module):
        direction = {n: p.detach() for n, p in direction.named_parameters()}
    if not isinstance(direction, Mapping):
        raise TypeError(f"a direction must be a dict name -> tensor or an nn.Module, got {type(direction).__name__}")
    unknown = sorted(set(direction) - set(params))
    if unknown:
        raise ValueError(f"direction has names the model lacks: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    out: Direction = {}
    for n, p in params.items():
        if n in direction:
            d = torch.as_tensor(direction[n]).detach()
            if tuple(d.shape) != tuple(p.shape):
                raise ValueError(f"direction[{n!r}] has shape {tuple(d.shape)}, the parameter {tuple(p.shape)}")
            out[n] = d.to(device=p.device, dtype=p.dtype)
        else:
            out[n] = torch.zeros_like(p.detach())
    return out


def _norm(direction: Mapping[str, torch.Tensor]) -> float:
    return float(math.sqrt(sum(float(d.double().pow(2).sum()) for d in direction.values())))


def _dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return float(sum(float((a[n].double() * b[n].double()).sum()) for n in a if n in b))


def _model_info(model: nn.Module) -> dict[str, Any]:
    return {"model": getattr(model, "craftlab_name", type(model).__name__),
            "num_params": int(sum(p.numel() for p in model.parameters()))}


# --------------------------------------------------------------------------------------------
# lines and planes
# --------------------------------------------------------------------------------------------

def _resolve(model: nn.Module, direction: DirectionLike | None, normalization: str | None, ignore: str | None,
             gen: torch.Generator) -> Direction:
    if direction is None:
        return normalize_direction(_gaussian(model, gen), model, normalization, ignore)
    d = _as_direction(direction, model)
    return normalize_direction(d, model, normalization, ignore) if normalization is not None else d


def line(model: nn.Module, batches: Any, direction: DirectionLike | None = None, distance: float = 1.0,
         steps: int = 51, normalization: str | None = "filter", seed: int = 0,
         loss_fn: LossFn = F.cross_entropy, ignore: str | None = "biasbn") -> LineResult:
    """Loss along ``w + alpha * d`` for ``alpha in linspace(-distance, distance, steps)``.

    Args:
        direction: dict or nn.Module (its parameters are the direction vector); ``None`` draws
            ``random_direction(model, seed, normalization, ignore)``.
        normalization: applied to a given direction too; ``None`` uses the given direction as is.
    Returns:
        :class:`LineResult` with loss/accuracy of shape (steps,); the centre (odd steps) is the model's loss.
    """
    _check(normalization, ignore)
    alphas = _axis(distance, steps)
    with preserved(model):
        d = _resolve(model, direction, normalization, ignore, torch.Generator().manual_seed(int(seed)))
        params = _params(model)
        names = list(params)
        targets = [params[n] for n in names]
        base = [p.detach().clone() for p in targets]
        ev = _Evaluator(model, _prepare_batches(model, batches), loss_fn)
        loss, acc, timing = _grid(ev, targets, base, [d[n] for n in names], None, alphas, np.zeros(1))
    meta = {**_model_info(model), "kind": "line", "distance": float(distance), "steps": int(steps),
            "normalization": normalization, "ignore": ignore, "seed": int(seed), "random": direction is None,
            "direction_norm": _norm(d), "weight_norm": _norm({n: b for n, b in zip(names, base)}),
            "n_examples": ev.n, "timing": timing}
    return LineResult(alphas, loss[:, 0], acc[:, 0], meta)


def plane(model: nn.Module, batches: Any, directions: Sequence[DirectionLike | None] | None = None,
          distance: float = 1.0, steps: int = 21, normalization: str | None = "filter", seed: int = 0,
          loss_fn: LossFn = F.cross_entropy, ignore: str | None = "biasbn", backend: str = "native") -> PlaneResult:
    """Loss on the grid ``w + alpha * d1 + beta * d2``, alpha and beta in ``linspace(-distance, distance, steps)``.

    Args:
        directions: ``(d1, d2)``, each a dict or an nn.Module (its parameters are the direction vector) or
            ``None`` (random). Random directions come from one generator seeded with `seed`: d1 equals
            ``random_direction(model, seed)``, d2 is the next draw.
        normalization: ``"filter"`` (Li et al.), ``"layer"`` or ``None`` (given directions used as is).
        backend: ``"native"`` (in-place parameter writes, fast) or ``"loss-landscapes"`` (the same grid
            evaluated by ``loss_landscapes.planar_interpolation`` on deep copies; for cross-checking).
    Returns:
        :class:`PlaneResult`, ``loss[i, j]`` at ``(alphas[i], betas[j])``, shape (steps, steps).
    """
    _check(normalization, ignore)
    if backend not in ("native", "loss-landscapes"):
        raise ValueError(f"backend must be 'native' or 'loss-landscapes', got {backend!r}")
    if directions is None:
        directions = (None, None)
    if isinstance(directions, (Mapping, nn.Module)) or len(directions) != 2:
        raise ValueError("directions must be a pair (d1, d2)")
    alphas = _axis(distance, steps)
    with preserved(model):
        gen = torch.Generator().manual_seed(int(seed))
        d1 = _resolve(model, directions[0], normalization, ignore, gen)
        d2 = _resolve(model, directions[1], normalization, ignore, gen)
        params = _params(model)
        names = list(params)
        batch_list = _prepare_batches(model, batches)
        if backend == "native":
            targets = [params[n] for n in names]
            base = [p.detach().clone() for p in targets]
            ev = _Evaluator(model, batch_list, loss_fn)
            loss, acc, timing = _grid(ev, targets, base, [d1[n] for n in names], [d2[n] for n in names],
                                      alphas, alphas)
        else:
            loss, acc, timing = _plane_loss_landscapes(model, batch_list, loss_fn, d1, d2, alphas)
    meta = {**_model_info(model), "kind": "plane", "distance": float(distance), "steps": int(steps),
            "normalization": normalization, "ignore": ignore, "seed": int(seed), "backend": backend,
            "random": [d is None for d in directions], "direction_norms": [_norm(d1), _norm(d2)],
            "direction_cosine": _dot(d1, d2) / max(_norm(d1) * _norm(d2), 1e-300),
            "n_examples": sum(len(y) for _, y in batch_list), "timing": timing}
    return PlaneResult(alphas, alphas.copy(), loss, acc, meta)


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
            self.evaluator: _Evaluator | None = None

        def __call__(self, model_wrapper: Any) -> tuple[float, float]:
            c = self.calls
            self.calls += 1
            row, pos = divmod(c, k)
            col = pos if row % 2 == 0 else k - 1 - pos  # list index in the returned row
            if row >= n or (row % 2 == 0 and col >= n) or (row % 2 == 1 and col == 0):
                return float("nan"), float("nan")
            if self.evaluator is None:
                self.evaluator = _Evaluator(model_wrapper.modules[0], batch_list, loss_fn)
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


# --------------------------------------------------------------------------------------------
# interpolation and compression
# --------------------------------------------------------------------------------------------

def _check_same_params(a: nn.Module, b: nn.Module, what: str = "compressed_model") -> None:
    pa, pb = _params(a), _params(b)
    if set(pa) != set(pb):
        missing, extra = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
        raise ValueError(f"{what} must have the same parameter names as the model; missing {missing[:5]}, "
                         f"extra {extra[:5]}")
    for n in pa:
        if pa[n].shape != pb[n].shape:
            raise ValueError(f"parameter {n!r} has shape {tuple(pb[n].shape)} in {what}, {tuple(pa[n].shape)} in model")


def interpolate(model_a: nn.Module, model_b: nn.Module, batches: Any, steps: int = 21, extend: float = 0.0,
                loss_fn: LossFn = F.cross_entropy, buffers: bool = True) -> LineResult:
    """Loss along ``(1 - t) a + t b`` for ``t in linspace(-extend, 1 + extend, steps)`` (t = 0 and 1 always included).

    Evaluated on `model_a`'s architecture. With ``buffers=True`` floating-point buffers (BatchNorm running
    statistics) are interpolated too, as ``--dir_type states`` in Li et al.'s code, so that t = 1 reproduces
    `model_b`'s own loss exactly; with ``False`` model_a's buffers are used all along. ``alphas`` holds t.
    """
    _check_same_params(model_a, model_b, "model_b")
    if extend < 0 or not math.isfinite(extend):
        raise ValueError(f"extend must be a finite number >= 0, got {extend!r}")
    if int(steps) != steps or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    t = _with_points(np.linspace(-extend, 1.0 + extend, int(steps)), (0.0, 1.0))
    with preserved(model_a), preserved(model_b):
        pa, pb = _params(model_a), _params(model_b)
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
        ev = _Evaluator(model_a, _prepare_batches(model_a, batches), loss_fn)
        loss, acc, timing = _grid(ev, targets, wa, diff, None, t, np.zeros(1), anchors={0.0: wa, 1.0: wb})
    meta = {**_model_info(model_a), "kind": "interpolation", "x": "t", "steps": int(steps), "extend": float(extend),
            "buffers": bool(buffers), "model_b": _model_info(model_b)["model"],
            "distance": _norm({n: d for n, d in zip(names, diff)}), "n_examples": ev.n, "timing": timing}
    return LineResult(t, loss[:, 0], acc[:, 0], meta)


def compression_delta(model: nn.Module, compressed_model: nn.Module) -> Direction:
    """``delta = C(w) - w`` over the named parameters (same names and shapes required), in `model`'s dtype."""
    _check_same_params(model, compressed_model)
    pc = _params(compressed_model)
    return {n: (pc[n].detach().to(dtype=p.dtype, device=p.device) - p.detach()) for n, p in model.named_parameters()}


@contextlib.contextmanager
def _math_attention():
    """Force the math SDPA kernel: the fused CPU attention kernels have no double backward (needed for HVPs)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def second_order_terms(model: nn.Module, batches: Any, delta: Mapping[str, torch.Tensor],
                       loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """``g.delta`` and ``delta.H.delta`` of the mean loss at the model's weights (one gradient, one HVP).

    The second-order model of the loss change is ``dL(t) ~ t g.delta + t^2/2 delta.H.delta``. Computed in
    eval mode with autograd (Pearlmutter's trick); the model is left untouched.
    """
    with preserved(model):
        params = _params(model)
        names = [n for n in params if n in delta]
        ps = [params[n] for n in names]
        ds = [delta[n].to(dtype=params[n].dtype, device=params[n].device) for n in names]
        if _norm(dict(zip(names, ds))) == 0.0:
            return {"loss": evaluate(model, batches, loss_fn)[0], "grad_dot_delta": 0.0, "delta_H_delta": 0.0}
        for p in model.parameters():
            p.requires_grad_(True)
        batch_list = _prepare_batches(model, batches)
        with torch.enable_grad(), _math_attention():
            loss = mean_loss(model, batch_list, loss_fn)
            grads = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
            pairs = [(g, d) for g, d in zip(grads, ds) if g is not None]
            gd = sum((g * d).sum() for g, d in pairs)
            if not torch.is_tensor(gd) or not gd.requires_grad:
                return {"loss": float(loss), "grad_dot_delta": float(gd), "delta_H_delta": 0.0}
            hd = torch.autograd.grad(gd, ps, allow_unused=True)
        dhd = sum(float((h.double() * d.double()).sum()) for h, d in zip(hd, ds) if h is not None)
        return {"loss": float(loss.detach()), "grad_dot_delta": float(gd.detach()), "delta_H_delta": dhd}


def _path_targets(model: nn.Module, compressed_model: nn.Module, on: str) -> nn.Module:
    if on == "compressed":
        return compressed_model
    if on == "original":
        return model
    raise ValueError(f"on must be 'compressed' or 'original', got {on!r}")


def compression_path(model: nn.Module, compressed_model: nn.Module, batches: Any,
                     t_range: tuple[float, float] = (-0.5, 1.5), steps: int = 41, second_order: bool = True,
                     loss_fn: LossFn = F.cross_entropy, on: str = "compressed") -> PathResult:
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
    t = _with_points(np.linspace(lo, hi, int(steps)), (0.0, 1.0))
    delta = compression_delta(model, compressed_model)
    loss_orig, acc_orig = evaluate(model, batches, loss_fn)
    loss_comp, acc_comp = evaluate(compressed_model, batches, loss_fn)
    with preserved(model), preserved(compressed_model):
        names = list(delta)
        tp = _params(target)
        targets = [tp[n] for n in names]
        pm, pc = _params(model), _params(compressed_model)
        w = [pm[n].detach().to(dtype=tp[n].dtype, device=tp[n].device).clone() for n in names]
        c = [pc[n].detach().to(dtype=tp[n].dtype, device=tp[n].device).clone() for n in names]
        ev = _Evaluator(target, _prepare_batches(target, batches), loss_fn)
        loss, acc, timing = _grid(ev, targets, w, [delta[n].to(dtype=tp[n].dtype) for n in names], None, t,
                                  np.zeros(1), anchors={0.0: w, 1.0: c})
    loss, acc = loss[:, 0], acc[:, 0]
    i0, i1 = int(np.flatnonzero(t == 0.0)[0]), int(np.flatnonzero(t == 1.0)[0])
    meta: dict[str, Any] = {
        **_model_info(model), "kind": "compression_path", "on": on, "steps": int(steps), "t_range": [lo, hi],
        "compressed_model": _model_info(compressed_model)["model"], "delta_norm": _norm(delta),
        "weight_norm": _norm({n: p.detach() for n, p in model.named_parameters()}),
        "loss_original": loss_orig, "accuracy_original": acc_orig,
        "loss_compressed": loss_comp, "accuracy_compressed": acc_comp,
        "architecture_gap": float(loss[i0] - loss_orig), "measured_jump": float(loss[i1] - loss[i0]),
        "n_examples": ev.n, "timing": timing,
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
                      ignore: str | None = "biasbn", on: str = "compressed") -> PlaneResult:
    """The plane spanned by ``delta = C(w) - w`` (alpha, not normalized: the compressed point is (1, 0))
    and a filter-normalized random direction rescaled to ``||delta||`` (beta).

    Grid: ``linspace(-distance, distance, steps)`` on both axes, with alpha = 1 added if not on it.
    ``on`` chooses the architecture that computes the loss, as in :func:`compression_path`; the point
    (1, 0) is evaluated at exactly the compressed parameters. ``meta["mark"]`` marks the compressed point.
    """
    target = _path_targets(model, compressed_model, on)
    betas = _axis(distance, steps)
    alphas = _with_points(betas, (0.0, 1.0))
    delta = compression_delta(model, compressed_model)
    dn = _norm(delta)
    eta = random_direction(model, seed, "filter", ignore)
    en = _norm(eta)
    eta = {n: v * (dn / en if en > 0 else 0.0) for n, v in eta.items()}
    with preserved(model), preserved(compressed_model):
        names = list(delta)
        tp = _params(target)
        targets = [tp[n] for n in names]
        pm, pc = _params(model), _params(compressed_model)
        w = [pm[n].detach().to(dtype=tp[n].dtype, device=tp[n].device).clone() for n in names]
        c = [pc[n].detach().to(dtype=tp[n].dtype, device=tp[n].device).clone() for n in names]
        ev = _Evaluator(target, _prepare_batches(target, batches), loss_fn)
        loss, acc, timing = _grid(ev, targets, w, [delta[n].to(dtype=tp[n].dtype) for n in names],
                                  [eta[n].to(dtype=tp[n].dtype) for n in names], alphas, betas,
                                  anchors={0.0: w, 1.0: c})
    meta = {**_model_info(model), "kind": "compression_plane", "on": on, "steps": int(steps),
            "distance": float(distance), "seed": int(seed), "ignore": ignore, "delta_norm": dn,
            "direction_cosine": _dot(delta, eta) / max(dn * _norm(eta), 1e-300),
            "compressed_model": _model_info(compressed_model)["model"],
            "mark": {"alpha": 1.0, "beta": 0.0, "label": "compressed"},
            "origin": {"alpha": 0.0, "beta": 0.0, "label": "original"},
            "axes": {"alpha": "C(w) - w", "beta": "random (filter-normalized, scaled to ||C(w) - w||)"},
            "n_examples": ev.n, "timing": timing}
    return PlaneResult(alphas, betas, loss, acc, meta)
