"""Result records of the probes, with one JSON serializer for all of them.

Every record is a dataclass deriving from :class:`Result`: ``to_dict()`` walks ``dataclasses.fields``
and makes each value JSON-able (arrays and tensors become nested lists, NaN and ±inf become ``null``,
strict JSON having no NaN); ``from_dict()`` inverts it using the fields' type annotations (arrays back to
float ``np.ndarray``, tensors back to tensors, ``null`` back to NaN). Records with a ``kind`` (the
landscape ones) store it first, so a reader can tell them apart.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

__all__ = [
    "EigenResult",
    "EpsSharpnessResult",
    "LineResult",
    "PathResult",
    "PlaneResult",
    "Result",
    "SpectralDensity",
    "TraceResult",
]


R = TypeVar("R", bound="Result")


def _nan_to_none(a: np.ndarray) -> Any:
    """Array -> nested lists with NaN as None (strict JSON has no NaN)."""
    return [_nan_to_none(r) for r in a] if a.ndim > 1 else [None if not np.isfinite(v) else float(v) for v in a]


def _jsonable(obj: Any) -> Any:
    """Make `obj` JSON-serialisable (numpy scalars/arrays, tuples, tensors, non-finite floats)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biu":
            return obj.tolist()
        return _nan_to_none(obj.astype(float)) if obj.ndim else _jsonable(obj.item())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _none_to_nan(v: Any) -> Any:
    if isinstance(v, list):
        return [_none_to_nan(x) for x in v]
    return float("nan") if v is None else v


def _restore(hint: Any, v: Any) -> Any:
    """Inverse of :func:`_jsonable` for a field annotated `hint`."""
    if hint is np.ndarray:
        return np.array([] if v is None else _none_to_nan(v), dtype=float)
    if v is None:
        return float("nan") if hint is float else None
    if hint is torch.Tensor:  # float64 for floats (what JSON stores), int64 for integers
        return torch.from_numpy(np.array(_none_to_nan(v)))
    if hint in (int, float, bool):
        return hint(v)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args:
        return [_restore(args[0], x) for x in v]
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _restore(kinds[0], v) if len(kinds) == 1 else v
    if origin is dict and len(args) == 2:
        return {k: _restore(args[1], x) for k, x in v.items()}
    return v


@dataclass
class Result:
    """Base of the probe results: generic, field-driven JSON (de)serialisation."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field (NaN stored as null), preceded by ``kind`` if the class has one."""
        out: dict[str, Any] = {"kind": self.kind} if self.kind else {}
        out.update((f.name, _jsonable(getattr(self, f.name))) for f in fields(self))
        return out

    @classmethod
    def from_dict(cls: type[R], d: Mapping[str, Any]) -> R:
        """Inverse of :meth:`to_dict` (absent fields take their defaults)."""
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _restore(hints[f.name], d[f.name]) for f in fields(cls) if f.name in d})


# ----------------------------------------------------------------------------------------------
# Hessian and sharpness


@dataclass
class EigenResult(Result):
    """Top Hessian eigenvalues.

    ``eigenvalues``: exactly k floats sorted by decreasing magnitude (signed; units of the loss per
    parameter²), repeated eigenvalues repeated. ``eigenvectors``: one dict name → tensor (parameter
    shapes, unit norm over all probed parameters, mutually orthogonal) per eigenvalue, when asked for.
    ``n_hvp``: Hessian-vector products used. ``converged``: every stopping test was met within
    ``max_iter``. ``runs``: Lanczos runs (the first, then restarts in the orthogonal complement of the
    eigenvectors found, which is how repeated eigenvalues are seen); 1 for the power method.
    """

    eigenvalues: list[float]
    eigenvectors: list[dict[str, torch.Tensor]] | None
    n_hvp: int
    converged: bool
    method: str = "lanczos"
    seconds: float = 0.0
    runs: int = 1


@dataclass
class TraceResult(Result):
    """Hutchinson estimate of Tr(H): ``trace`` = mean of ``samples`` (each vᵀHv), ``stderr`` its
    standard error (NaN for a single sample), ``n_hvp`` the products used."""

    trace: float
    stderr: float
    samples: list[float]
    n_hvp: int
    seconds: float = 0.0


@dataclass
class SpectralDensity(Result):
    """Stochastic Lanczos quadrature of the Hessian spectrum.

    ``nodes`` (1-D float64, Ritz values of every run concatenated) and ``weights`` (same shape,
    ≥ 0, summing to 1 over all runs) form a quadrature rule for the spectral measure
    (1/n) Σ_i δ(λ − λ_i) of the n×n Hessian. ``n_params`` = n; ``run`` gives each node's run index.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    run: torch.Tensor
    n_params: int
    n_hvp: int
    seconds: float = 0.0

    def on_grid(self, n_grid: int = 1000, sigma: float | None = None,
                grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian-smoothed density; see :func:`density_on_grid`."""
        return density_on_grid(self.nodes, self.weights, n_grid=n_grid, sigma=sigma, grid=grid)

    @property
    def trace_estimate(self) -> float:
        """n · Σ wᵢ θᵢ: the SLQ trace estimate (equals a Hutchinson estimate with the same probes)."""
        return float(self.n_params * (self.nodes * self.weights).sum())


@dataclass
class EpsSharpnessResult(Result):
    """ε-sharpness: ``sharpness`` = ``perturbed_loss`` − ``loss`` (loss units), where
    ``perturbed_loss`` is the highest loss found in the (adaptive) ρ-ball.

    ``eps_norm``: the norm of the kept perturbation in the ball's own metric (‖ε‖, or ‖ε/T‖ for
    the adaptive ball; ≤ ``rho``); ``l2_norm``: its plain Euclidean norm. ``perturbation``: the
    kept ε (name → tensor), when asked for.
    """

    sharpness: float
    loss: float
    perturbed_loss: float
    rho: float
    adaptive: bool = False
    steps: int = 1
    eps_norm: float = 0.0
    l2_norm: float = 0.0
    perturbation: dict[str, torch.Tensor] | None = None


# ----------------------------------------------------------------------------------------------
# landscapes


@dataclass
class LineResult(Result):
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


@dataclass
class PlaneResult(Result):
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


@dataclass
class PathResult(Result):
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


def density_on_grid(nodes: torch.Tensor, weights: torch.Tensor, n_grid: int = 1000, sigma: float | None = None,
                    grid: torch.Tensor | None = None, pad: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-smoothed spectral density Σ_i w_i N(λ; θ_i, σ²) on a grid.

    Default σ = 1% of the node range; default grid: `n_grid` points over the node range padded by
    `pad` of it plus 3σ each side. Returns (grid, density), both float64; the density integrates to
    ≈ Σ w_i = 1 over the default grid.
    """
    nodes = torch.as_tensor(nodes, dtype=torch.float64).reshape(-1)
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    lo, hi = float(nodes.min()), float(nodes.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    if sigma is None:
        sigma = 0.01 * span
    if grid is None:
        margin = pad * span + 3 * sigma
        grid = torch.linspace(lo - margin, hi + margin, n_grid, dtype=torch.float64)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    z = (grid[:, None] - nodes[None, :]) / sigma
    density = (torch.exp(-0.5 * z ** 2) * weights[None, :]).sum(1) / (sigma * math.sqrt(2 * math.pi))
    return grid, density
