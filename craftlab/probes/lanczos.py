"""Lanczos for symmetric operators given as a matrix-vector product on flat vectors: the plain run
(full reorthogonalisation, used by stochastic Lanczos quadrature) and the top-k eigensolver with locking
and restarts (used for the Hessian's top eigenvalues, which may repeat).

Nothing here knows about models: `mv` maps a flat vector to a flat vector, so the solver can be checked
against dense matrices directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

__all__ = ["TopEigen", "lanczos", "rel_change", "top_by_magnitude", "top_eigenpairs", "tridiagonal"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> torch.Tensor:
    """The symmetric tridiagonal Lanczos matrix T (float64) from its diagonal and off-diagonal."""
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        b = torch.tensor(betas[:m - 1], dtype=torch.float64)
        t = t + torch.diag(b, 1) + torch.diag(b, -1)
    return t


def top_by_magnitude(theta: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest-magnitude entries (ties in index order)."""
    return torch.argsort(theta.abs(), descending=True, stable=True)[:k]


def rel_change(new: float, old: float) -> float:
    # The same test as PyHessian's power iteration: |new − old| / (|old| + 1e-6).
    return abs(new - old) / (abs(old) + 1e-6)


def _ritz_error(theta: torch.Tensor, s_last: torch.Tensor, beta: float, i: int) -> float:
    """A-posteriori error estimate of Ritz value i: min(r, r²/gap), r = β|s_mi| the residual norm ‖Hx − θx‖.

    r bounds the distance to the nearest eigenvalue; r²/gap is the sharper (Kato–Temple type) estimate,
    with the gap to the other Ritz values standing in for the gap to the rest of the spectrum.
    """
    r = abs(beta * float(s_last[i]))
    others = torch.cat([theta[:i], theta[i + 1:]])
    if not len(others):
        return r  # no gap to measure yet: the residual bound alone
    gap = float((others - theta[i]).abs().min())
    return min(r, r * r / gap) if gap > 0 else r


def _project_out(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w minus its component in the span of the orthonormal rows of `basis` ("twice is enough")."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def lanczos(mv: MatVec, v0: torch.Tensor, max_iter: int,
            target: int | Callable[[torch.Tensor], int] = 0, tol: float = 0.0,
            locked: torch.Tensor | None = None, below: float | None = None,
            below_tol: float = 0.0) -> tuple[list[float], list[float], torch.Tensor, str]:
    """Lanczos with full reorthogonalisation on flat vectors, in the orthogonal complement of `locked`.

    `locked` (r × n, orthonormal rows, or None) is deflated: the start vector and every new Lanczos
    vector are orthogonalised against it, so the run sees H restricted to the complement. Stops with
    status ``"invariant"`` on breakdown (the Krylov space is invariant: its Ritz values are exact) or when
    the complement is exhausted; ``"max_iter"`` after `max_iter` steps; ``"converged"`` when — with
    ``target > 0`` (an int, or a function of the current Ritz values giving one) and ``tol > 0`` — each of
    the `target` largest-magnitude Ritz values θ both changed by less than `tol` (relative, PyHessian's
    test) since the previous step and has an estimated error (:func:`_ritz_error`) below tol·|θ|. The
    second condition guards against stopping on a plateau: with clustered eigenvalues a Ritz value can
    move by < tol for a step while still far off. With `below` (a magnitude), the run also stops, with
    status ``"below"``, once its dominant Ritz value θ has an estimated error below the looser `below_tol`
    (relative; from the second step on, when a gap to another Ritz value exists, the sharper r²/gap estimate)
    and lies clearly below it: |θ|·(1 + below_tol) < `below`. That is all a confirming run needs to know (the
    relative-change test is not asked for here: it only delayed the stop); a Ritz value near or above `below`
    (a cluster) is converged to `tol` as usual. Returns (alphas, betas, Q (m × n basis), status).
    """
    n = v0.numel() - (0 if locked is None else locked.shape[0])
    if locked is not None and len(locked):
        v0 = _project_out(v0, locked)
    m_max = max(0, min(max_iter, n))
    q_basis = v0.new_empty(m_max, v0.numel())
    if m_max == 0 or float(v0.norm()) == 0.0:
        return [], [], q_basis[:0], "invariant"
    q = v0 / v0.norm()
    alphas: list[float] = []
    betas: list[float] = []
    prev: torch.Tensor | None = None
    eps = torch.finfo(v0.dtype).eps
    status = "max_iter"
    for j in range(m_max):
        q_basis[j] = q
        w = mv(q)
        a = float(torch.dot(w.double(), q.double()))
        w = w - a * q
        if j > 0:
            w = w - betas[-1] * q_basis[j - 1]
        if locked is not None and len(locked):
            w = _project_out(w, locked)
        w = _project_out(w, q_basis[:j + 1])
        alphas.append(a)
        b = float(w.norm())
        if below is not None:
            theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
            i = int(top_by_magnitude(theta, 1)[0])
            top_now = float(theta[i])
            if _ritz_error(theta, s[-1], b, i) <= below_tol * abs(top_now) and \
                    abs(top_now) * (1 + below_tol) < below:
                status = "below"
                break
        if target and tol > 0:
            theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
            want = target(theta) if callable(target) else target
            if j + 1 >= want:
                idx = top_by_magnitude(theta, want)
                top = theta[idx]
                if prev is not None and len(prev) == len(top) and \
                        all(rel_change(float(t), float(p)) < tol for t, p in zip(top, prev)) and \
                        all(_ritz_error(theta, s[-1], b, int(i)) <= tol * abs(float(theta[i])) for i in idx):
                    status = "converged"
                    break
                prev = top
        scale = max(abs(x) for x in alphas + betas) if betas else abs(a)
        if b <= 100 * eps * max(scale, 1e-30) or j + 1 >= n:
            status = "invariant"  # Krylov space exhausted: its Ritz values are exact eigenvalues
            break
        betas.append(b)
        q = w / b
    return alphas, betas[:len(alphas) - 1], q_basis[:len(alphas)], status


class TopEigen(NamedTuple):
    """Result of :func:`top_eigenpairs`."""

    values: list[float]  # exactly k, by decreasing magnitude
    vectors: torch.Tensor | None  # (k, n) orthonormal Ritz vectors, when asked for
    converged: bool
    rayleigh0: float  # q1ᵀAq1 for the first start vector q1 = v0/‖v0‖
    runs: int


def top_eigenpairs(mv: MatVec, n: int, k: int, max_iter: int, tol: float, new_start: Callable[[], torch.Tensor],
                   v0: torch.Tensor | None = None, vectors: bool = False) -> TopEigen:
    """The k largest-magnitude eigenvalues of the symmetric n × n operator `mv`, repeated ones repeated.

    One Lanczos run sees a single copy of each eigenvalue (the start vector's component in the eigenspace),
    so repeated eigenvalues need restarts: the converged Ritz vectors (or, on breakdown, the whole invariant
    Krylov basis) are locked, and a new run from a random vector (`new_start()`) in their orthogonal
    complement looks for eigenvalues larger in magnitude than the k-th found so far; it stops as soon as its
    dominant Ritz value, with an estimated error below √tol, is clearly below the k-th magnitude (the usual case: no
    multiplicity, a few products), else it converges as many of its top Ritz values as could enter the top k,
    plus one, to tol. Runs continue until one finds nothing new (for
    k = 1 the first run suffices: a repeated top eigenvalue does not change the answer), the space is
    exhausted, or `max_iter` products (all runs together, ≥ k) are spent; ``converged`` is False in the last
    case. `v0`: the first run's start vector (default `new_start()`).
    """
    if max_iter < k or k > n:
        raise ValueError(f"need k <= n and max_iter >= k, got k={k}, n={n}, max_iter={max_iter}")
    start = v0 if v0 is not None else new_start()
    locked = start.new_empty(0, n)
    values: list[float] = []
    vecs: list[torch.Tensor | None] = []
    budget, runs, converged, alpha0 = max_iter, 0, True, math.nan
    while budget > 0 and len(locked) < n:
        start = start if runs == 0 else new_start()
        enough = len(values) >= k  # then only values above c, the k-th magnitude so far, matter
        c = float(torch.tensor(values).abs().sort(descending=True).values[k - 1]) if enough else 0.0

        def target(theta: torch.Tensor, c: float = c, enough: bool = enough) -> int:
            return min(k, 1 + int((theta.abs() > c * (1 + tol)).sum())) if enough else k

        # a confirming run (enough values) stops as soon as it shows that nothing above c is in its reach;
        # it converges its Ritz values only when one gets near or above c (a cluster at the k-th value)
        alphas, betas, q_basis, status = lanczos(mv, start, budget, target, tol, locked,
                                                 below=c if enough and c > 0 else None, below_tol=math.sqrt(tol))
        runs += 1
        budget -= len(alphas)
        if runs == 1:
            alpha0 = alphas[0] if alphas else math.nan
        if not alphas:
            break
        theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
        keep = len(theta) if status == "invariant" else min(target(theta), len(theta))
        order = top_by_magnitude(theta, keep)
        ritz = s[:, order[:k]].to(q_basis.dtype).T @ q_basis  # vectors for the run's top k only
        ritz = ritz / ritz.norm(dim=1, keepdim=True)
        values += [float(t) for t in theta[order]]
        vecs += [*ritz, *[None] * (keep - len(ritz))]
        locked = torch.cat([locked, q_basis if status == "invariant" else ritz])
        if status == "max_iter":
            converged = False
            break
        if (k == 1 and values) or (enough and float(theta.abs().max()) <= c * (1 + tol)):
            break  # nothing in the complement can enter the top k
    else:
        converged = converged and len(locked) >= n  # products spent before a run confirmed the top k
    if len(values) < k:  # pragma: no cover - every run adds its steps' worth of values or k of them
        raise RuntimeError(f"Lanczos found {len(values)} < k = {k} eigenvalues")
    # vectors were kept for each run's top k only, listed first, so the global top k all have one
    ranked = sorted(range(len(values)), key=lambda i: -abs(values[i]))[:k]
    out = torch.stack([vecs[i] for i in ranked]) if vectors else None
    return TopEigen([values[i] for i in ranked], out, converged, alpha0, runs)
