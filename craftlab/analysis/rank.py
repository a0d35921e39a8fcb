"""Rank statistics: ranks with ties, Spearman's rho and its permutation test (re-exported by
:mod:`craftlab.analysis.stats`). numpy only; randomness from a local ``default_rng(seed)``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["rankdata", "spearman", "spearman_test"]


def rankdata(values: Any) -> np.ndarray:
    """Ranks 1..n of `values`, ties getting the mean of their ranks.

    >>> rankdata([10, 20, 20, 5]).tolist()
    [2.0, 3.5, 3.5, 1.0]
    """
    v = np.asarray(values, dtype=float).ravel()
    order = np.argsort(v, kind="stable")
    sv = v[order]
    new = np.r_[True, sv[1:] != sv[:-1]] if len(v) else np.empty(0, bool)
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(v)] - 1
    ranks = np.empty(len(v))
    ranks[order] = ((starts + ends) / 2.0 + 1.0)[np.cumsum(new) - 1]
    return ranks


def _centered_ranks(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length: {len(x)} vs {len(y)}")
    ok = np.isfinite(x) & np.isfinite(y)
    rx, ry = rankdata(x[ok]), rankdata(y[ok])
    return rx - rx.mean() if len(rx) else rx, ry - ry.mean() if len(ry) else ry


def spearman(x: Any, y: Any) -> float:
    """Spearman ρ of the finite pairs of `x` and `y` (ties averaged); NaN with < 3 pairs or a constant side.

    >>> spearman([1, 2, 3, 4], [10, 30, 20, 40])
    0.8
    """
    rx, ry = _centered_ranks(x, y)
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum())) if len(rx) >= 3 else 0.0
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def spearman_test(x: Sequence[float] | Any, y: Sequence[float] | Any, n_permutations: int = 10000,
                  seed: int = 0) -> tuple[float, float, int]:
    """Spearman ρ of the finite pairs, a two-sided permutation p-value and the number of pairs.

    p = ``(b + 1) / (m + 1)`` over `n_permutations` permutations of y from a local ``default_rng(seed)``.

    >>> rho, p, n = spearman_test([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]); round(rho, 3), n
    (0.829, 6)
    """
    rx, ry = _centered_ranks(x, y)
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return rho, float("nan"), len(rx)
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    rng = np.random.default_rng(seed)
    b = 0
    for start in range(0, n_permutations, 2048):
        m = min(2048, n_permutations - start)
        perms = np.argsort(rng.random((m, len(ry))), axis=1)
        b += int((np.abs((ry[perms] * rx).sum(axis=1) / den) >= abs(rho) - 1e-12).sum())
    return rho, (b + 1) / (n_permutations + 1), len(rx)
