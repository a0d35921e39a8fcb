"""Sharpness probes: Hessian spectra, Hessian trace, ε-sharpness, per-layer curvature, spectral density.

Every probe runs the model in eval mode (BatchNorm uses running statistics, no dropout) inside
:func:`craftlab._probe.preserved`, so the model comes back bit-identical: parameters, buffers,
``requires_grad`` flags, ``.grad`` and train/eval flags. Results therefore do not depend on whether
the model was in train or eval mode.

Common arguments:

- ``batches``: one ``(x, y)`` pair or an iterable of pairs (a DataLoader, a list). The loss is the
  example-weighted mean over all examples, so the Hessian is that of the mean loss.
- ``params``: names (as in ``model.named_parameters()``) of the parameters the Hessian is taken
  with respect to; default: every parameter with ``requires_grad=True``. Other parameters are held
  fixed (their ``requires_grad`` is switched off during the probe and restored afterwards).
- ``loss_fn``: ``loss_fn(logits, y) -> scalar mean loss``; default cross-entropy.

Hessian-vector products use Pearlmutter's trick (double backward). The gradient graph of each
batch is built once and reused across products when there are at most ``MAX_CACHED_BATCHES``
batches; with more batches it is rebuilt per product (less memory, one extra forward+backward per
batch and product). Attention goes through PyTorch's "math" SDPA kernel while the graph is built,
because the fused CPU/CUDA attention kernels do not implement double backward.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import unknown_name
from ._probe import LossFn, as_batches, mean_loss, preserved

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

MAX_CACHED_BATCHES = 4
"""Keep the double-backward graphs of at most this many batches alive across HVPs."""

Batch = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class EigenResult:
    """Top Hessian eigenvalues.

    ``eigenvalues``: floats sorted by decreasing magnitude (signed; units of the loss per
    parameter²). ``eigenvectors``: one dict name → tensor (parameter shapes, unit norm over all
    probed parameters) per eigenvalue, when asked for. ``n_hvp``: Hessian-vector products used.
    ``converged``: the stopping test was met before ``max_iter``.
    """

    eigenvalues: list[float]
    eigenvectors: list[dict[str, torch.Tensor]] | None
    n_hvp: int
    converged: bool
    method: str = "lanczos"
    seconds: float = 0.0


@dataclass
class TraceResult:
    """Hutchinson estimate of Tr(H): ``trace`` = mean of ``samples`` (each vᵀHv), ``stderr`` its
    standard error (NaN for a single sample), ``n_hvp`` the products used."""

    trace: float
    stderr: float
    samples: list[float]
    n_hvp: int
    seconds: float = 0.0


@dataclass
class EpsSharpnessResult:
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


@dataclass
class SpectralDensity:
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


# ----------------------------------------------------------------------------------------------
# plumbing


def _math_attention() -> contextlib.AbstractContextManager:
    """SDPA restricted to the composite "math" kernel, which supports double backward."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - very old torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def _select(model: nn.Module, params: Sequence[str] | None) -> list[tuple[str, nn.Parameter]]:
    named = dict(model.named_parameters())
    if params is None:
        sel = [(n, p) for n, p in named.items() if p.requires_grad]
        if not sel:
            raise ValueError("the model has no trainable parameters; pass `params` (parameter names) explicitly")
        return sel
    if isinstance(params, str):
        params = [params]
    sel, seen = [], set()
    for n in params:
        if n not in named:
            raise unknown_name("parameter", n, named)
        if n not in seen:
            seen.add(n)
            sel.append((n, named[n]))
    if not sel:
        raise ValueError("`params` is empty: pass at least one parameter name")
    return sel


@contextlib.contextmanager
def _probing(model: nn.Module, params: Sequence[str] | None) -> Iterator[list[tuple[str, nn.Parameter]]]:
    """`preserved(model)` (eval mode, exact restore) with gradients switched on only for the probed params."""
    sel = _select(model, params)
    with preserved(model):
        ids = {id(p) for _, p in sel}
        for p in model.parameters():
            p.requires_grad_(id(p) in ids)
        yield sel


def _on_device(batches: Any, model: nn.Module) -> list[Batch]:
    out = as_batches(batches)
    p = next(model.parameters(), None)
    if p is None:
        return out
    return [(x.to(p.device), y.to(p.device)) for x, y in out]


def _weights(batches: list[Batch]) -> list[float]:
    n = sum(len(y) for _, y in batches)
    return [len(y) / n for _, y in batches]


def _flat(ts: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(dtype) if dtype else t.reshape(-1) for t in ts])


def _unflat(v: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(v[i:i + p.numel()].view(p.shape).to(p.dtype))
        i += p.numel()
    return out


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _random_like(p: torch.Tensor, gen: torch.Generator, distribution: str) -> torch.Tensor:
    if distribution == "rademacher":
        v = torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1
    elif distribution == "gaussian":
        v = torch.randn(p.shape, generator=gen, dtype=p.dtype if p.dtype.is_floating_point else torch.float32)
    else:
        raise unknown_name("distribution", distribution, ("rademacher", "gaussian"))
    return v.to(device=p.device, dtype=p.dtype)


def _loss_and_grad(model: nn.Module, batches: list[Batch], ps: list[torch.Tensor],
                   loss_fn: LossFn) -> tuple[float, list[torch.Tensor]]:
    """Mean loss and its gradient w.r.t. `ps`, accumulated batch by batch (no graph kept)."""
    total, grads = 0.0, [torch.zeros_like(p) for p in ps]
    for (x, y), w in zip(batches, _weights(batches)):
        loss = mean_loss(model, [(x, y)], loss_fn) * w
        gs = torch.autograd.grad(loss, ps, allow_unused=True)
        for acc, g in zip(grads, gs):
            if g is not None:
                acc.add_(g)
        total += float(loss.detach())
    return total, grads


def _loss(model: nn.Module, batches: list[Batch], loss_fn: LossFn) -> float:
    with torch.no_grad():
        return float(mean_loss(model, batches, loss_fn))


class _HessianOperator:
    """H v for the mean loss over `batches`, w.r.t. `ps` (to be used inside `_probing`)."""

    def __init__(self, model: nn.Module, batches: list[Batch], ps: list[torch.Tensor], loss_fn: LossFn,
                 cache: bool | None = None):
        self.model, self.batches, self.ps, self.loss_fn = model, batches, ps, loss_fn
        self.w = _weights(batches)
        self.cache = len(batches) <= MAX_CACHED_BATCHES if cache is None else cache
        self.n_hvp = 0
        self.n = sum(p.numel() for p in ps)
        self.dtype = ps[0].dtype
        self.loss: float | None = None
        self.grad: list[torch.Tensor] | None = None
        self._graphs: list[tuple[torch.Tensor | None, ...]] | None = None
        if self.cache:
            self._graphs, self.loss, self.grad = [], 0.0, [torch.zeros_like(p) for p in ps]
            for (x, y), w in zip(batches, self.w):
                loss, gs = self._graph(x, y, w)
                self._graphs.append(gs)
                self.loss += float(loss.detach())
                for acc, g in zip(self.grad, gs):
                    if g is not None:
                        acc.add_(g.detach())

    def _graph(self, x: torch.Tensor, y: torch.Tensor,
               w: float) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        with _math_attention():
            loss = mean_loss(self.model, [(x, y)], self.loss_fn) * w
            gs = torch.autograd.grad(loss, self.ps, create_graph=True, allow_unused=True)
        return loss, gs

    def matvec(self, vs: Sequence[torch.Tensor], idx: Sequence[int] | None = None) -> list[torch.Tensor]:
        """H[idx, idx] @ v for the parameter block `idx` (default: all); `vs` matches `idx`."""
        idx = list(range(len(self.ps))) if idx is None else list(idx)
        inputs = [self.ps[i] for i in idx]
        out = [torch.zeros_like(p) for p in inputs]
        for b, ((x, y), w) in enumerate(zip(self.batches, self.w)):
            gs = self._graphs[b] if self._graphs is not None else self._graph(x, y, w)[1]
            outs, gos = [], []
            for j, i in enumerate(idx):
                g = gs[i]
                if g is not None and g.requires_grad:
                    outs.append(g)
                    gos.append(vs[j])
            if not outs:
                continue
            with _math_attention():
                hv = torch.autograd.grad(outs, inputs, grad_outputs=gos, retain_graph=self.cache, allow_unused=True)
            for acc, h in zip(out, hv):
                if h is not None:
                    acc.add_(h)
        self.n_hvp += 1
        return out

    def flat_matvec(self, idx: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        like = self.ps if idx is None else [self.ps[i] for i in idx]
        return lambda v: _flat(self.matvec(_unflat(v, like), idx), v.dtype)


def _tridiag(alphas: Sequence[float], betas: Sequence[float]) -> torch.Tensor:
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        b = torch.tensor(betas[:m - 1], dtype=torch.float64)
        t = t + torch.diag(b, 1) + torch.diag(b, -1)
    return t


def _top_by_magnitude(theta: torch.Tensor, k: int) -> torch.Tensor:
    return torch.argsort(theta.abs(), descending=True, stable=True)[:k]


def _rel_change(new: float, old: float) -> float:
    # The same test as PyHessian's power iteration: |new − old| / (|old| + 1e-6).
    return abs(new - old) / (abs(old) + 1e-6)


def _ritz_error(theta: torch.Tensor, s_last: torch.Tensor, beta: float, i: int) -> float:
    """A-posteriori error estimate of Ritz value i: min(r, r²/gap), r = β|s_mi| the residual norm ‖Hx − θx‖.

    r bounds the distance to the nearest eigenvalue; r²/gap is the sharper (Kato–Temple type) estimate,
    with the gap to the other Ritz values standing in for the gap to the rest of the spectrum.
    """
    r = abs(beta * float(s_last[i]))
    others = torch.cat([theta[:i], theta[i + 1:]])
    gap = float((others - theta[i]).abs().min()) if len(others) else math.inf
    return min(r, r * r / gap) if gap > 0 else r


def _lanczos(mv: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, max_iter: int, k: int = 0,
             tol: float = 0.0) -> tuple[list[float], list[float], torch.Tensor, bool]:
    """Lanczos with full reorthogonalisation, on flat vectors.

    Stops after `max_iter` steps, on breakdown (an invariant subspace was found: exact), or — when
    ``k > 0`` and ``tol > 0`` — once each of the k largest-magnitude Ritz values θ both changed by less
    than `tol` (relative, PyHessian's test) since the previous step and has an estimated error
    (:func:`_ritz_error`) below tol·|θ|. The second condition guards against stopping on a plateau:
    with clustered eigenvalues a Ritz value can move by < tol for a step while still far off.
    Returns (alphas, betas, Q (m × n basis), converged).
    """
    n = v0.numel()
    m_max = max(1, min(max_iter, n))
    q_basis = v0.new_empty(m_max, n)
    q = v0 / v0.norm()
    alphas: list[float] = []
    betas: list[float] = []
    prev: torch.Tensor | None = None
    converged = False
    eps = torch.finfo(v0.dtype).eps
    for j in range(m_max):
        q_basis[j] = q
        w = mv(q)
        a = float(torch.dot(w.double(), q.double()))
        w = w - a * q
        if j > 0:
            w = w - betas[-1] * q_basis[j - 1]
        basis = q_basis[:j + 1]
        for _ in range(2):  # "twice is enough" (classical Gram-Schmidt, full reorthogonalisation)
            w = w - basis.T @ (basis @ w)
        alphas.append(a)
        b = float(w.norm())
        if k > 0 and tol > 0 and j + 1 >= k:
            theta, s = torch.linalg.eigh(_tridiag(alphas, betas))
            idx = _top_by_magnitude(theta, k)
            top = theta[idx]
            if prev is not None and len(prev) == len(top) and \
                    all(_rel_change(float(t), float(p)) < tol for t, p in zip(top, prev)) and \
                    all(_ritz_error(theta, s[-1], b, int(i)) <= tol * abs(float(theta[i])) for i in idx):
                converged = True
                break
            prev = top
        scale = max(abs(x) for x in alphas + betas) if betas else abs(a)
        if b <= 100 * eps * max(scale, 1e-30) or j + 1 >= n:
            converged = True  # Krylov space exhausted: its Ritz values are exact eigenvalues
            break
        betas.append(b)
        q = w / b
    return alphas, betas[:len(alphas) - 1], q_basis[:len(alphas)], converged


# ----------------------------------------------------------------------------------------------
# public probes


def hessian_vector_product(model: nn.Module, batches: Any, vec_list: Sequence[torch.Tensor] | dict[str, torch.Tensor],
                           params: Sequence[str] | None = None,
                           loss_fn: LossFn = F.cross_entropy) -> list[torch.Tensor] | dict[str, torch.Tensor]:
    """H v of the mean loss over `batches` (example-weighted), by double backward.

    `vec_list`: tensors with the shapes of the probed parameters, in their order (a list), or a dict
    name → tensor (its keys are then the probed parameters unless `params` is given). Returns the
    same kind (list or dict) with H v, in loss units per parameter².
    """
    as_dict = isinstance(vec_list, dict)
    if as_dict and params is None:
        params = list(vec_list)
    with _probing(model, params) as sel:
        vs = [vec_list[n] for n, _ in sel] if as_dict else list(vec_list)
        if len(vs) != len(sel) or any(tuple(v.shape) != tuple(p.shape) for v, (_, p) in zip(vs, sel)):
            raise ValueError("vec_list must hold one tensor per probed parameter, with the parameter's shape; "
                             f"expected shapes {[tuple(p.shape) for _, p in sel]}")
        ps = [p for _, p in sel]
        op = _HessianOperator(model, _on_device(batches, model), ps, loss_fn)
        hv = [h.detach().clone() for h in op.matvec([v.to(device=p.device, dtype=p.dtype) for v, p in zip(vs, ps)])]
        del op
    return {n: h for (n, _), h in zip(sel, hv)} if as_dict else hv


def _eig_lanczos(op: _HessianOperator, k: int, max_iter: int, tol: float, gen: torch.Generator, vectors: bool,
                 idx: Sequence[int] | None = None,
                 v0: torch.Tensor | None = None) -> tuple[list[float], torch.Tensor | None, bool, float]:
    """Top-k by magnitude via Lanczos; also returns the first Rayleigh quotient q1ᵀHq1 (q1 = v0/‖v0‖)."""
    like = op.ps if idx is None else [op.ps[i] for i in idx]
    if v0 is None:
        v0 = _flat([torch.randn(p.shape, generator=gen, dtype=op.dtype).to(p.device) for p in like])
    alphas, betas, q_basis, converged = _lanczos(op.flat_matvec(idx), v0, max_iter, k=k, tol=tol)
    theta, s = torch.linalg.eigh(_tridiag(alphas, betas))
    order = _top_by_magnitude(theta, k)
    vecs = None
    if vectors:
        vecs = (s[:, order].to(q_basis.dtype).T @ q_basis)  # (k, n) Ritz vectors
        vecs = vecs / vecs.norm(dim=1, keepdim=True)
    return [float(t) for t in theta[order]], vecs, converged, alphas[0]


def _eig_power(op: _HessianOperator, k: int, max_iter: int, tol: float,
               gen: torch.Generator) -> tuple[list[float], torch.Tensor, bool]:
    """PyHessian's method: power iteration, re-orthogonalised against the eigenvectors found so far."""
    mv = op.flat_matvec()
    found: list[torch.Tensor] = []
    values: list[float] = []
    all_converged = True
    for _ in range(k):
        v = _flat([torch.randn(p.shape, generator=gen, dtype=op.dtype).to(p.device) for p in op.ps])
        v = v / v.norm()
        lam: float | None = None
        converged = False
        for _ in range(max_iter):
            for u in found:
                v = v - torch.dot(v, u) * u
            v = v / v.norm()
            hv = mv(v)
            new = float(torch.dot(hv.double(), v.double()))
            v = hv / hv.norm()
            if lam is not None and _rel_change(new, lam) < tol:
                lam, converged = new, True
                break
            lam = new
        all_converged &= converged
        found.append(v)
        values.append(float(lam))
    order = sorted(range(k), key=lambda i: -abs(values[i]))
    return [values[i] for i in order], torch.stack([found[i] for i in order]), all_converged


def top_hessian_eigenvalues(model: nn.Module, batches: Any, k: int = 1, max_iter: int = 100, tol: float = 1e-4,
                            seed: int = 0, return_eigenvectors: bool = False, method: str = "lanczos",
                            params: Sequence[str] | None = None, loss_fn: LossFn = F.cross_entropy) -> EigenResult:
    """The `k` largest-magnitude eigenvalues of the Hessian of the mean loss.

    ``method="lanczos"`` (default): Lanczos with full reorthogonalisation; stops when the top-k Ritz
    values change by less than `tol` (relative) between steps; `max_iter` caps the total number of
    Hessian-vector products. ``method="power"``: PyHessian's power iteration with deflation by
    re-orthogonalisation, same relative-change test per eigenvalue, `max_iter` products per
    eigenvalue (the baseline; typically several times slower).
    """
    if method not in ("lanczos", "power"):
        raise unknown_name("method", method, ("lanczos", "power"))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with _probing(model, params) as sel:
        ps = [p for _, p in sel]
        op = _HessianOperator(model, _on_device(batches, model), ps, loss_fn)
        k = min(k, op.n)
        if method == "lanczos":
            values, vecs, converged, _ = _eig_lanczos(op, k, max_iter, tol, gen, return_eigenvectors)
        else:
            values, vecs, converged = _eig_power(op, k, max_iter, tol, gen)
        eigvecs = None
        if return_eigenvectors and vecs is not None:
            eigvecs = [{n: t.detach().clone() for (n, _), t in zip(sel, _unflat(v, ps))} for v in vecs]
        n_hvp = op.n_hvp
        del op
    return EigenResult(values, eigvecs, n_hvp, converged, method, time.perf_counter() - t0)


def _hutchinson(op: _HessianOperator, n_samples: int, gen: torch.Generator, distribution: str,
                blocks: Sequence[Sequence[int]] | None = None) -> list[list[float]]:
    """Per sample: vᵀHv, or with `blocks` the per-block parts v_bᵀ(Hv)_b (one joint product per sample)."""
    out = []
    for _ in range(n_samples):
        v = [_random_like(p, gen, distribution) for p in op.ps]
        hv = op.matvec(v)
        if blocks is None:
            out.append([_dot(v, hv)])
        else:
            out.append([_dot([v[i] for i in b], [hv[i] for i in b]) for b in blocks])
    return out


def _mean_stderr(xs: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(xs, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(xs))) if len(xs) > 1 else float("nan")


def hessian_trace(model: nn.Module, batches: Any, n_samples: int = 100, seed: int = 0,
                  params: Sequence[str] | None = None, loss_fn: LossFn = F.cross_entropy,
                  distribution: str = "rademacher") -> TraceResult:
    """Hutchinson's estimate Tr(H) ≈ mean_i v_iᵀ H v_i, v_i Rademacher (±1) or Gaussian, `n_samples` products.

    ``trace`` is in loss units per parameter² summed over the probed parameters; ``stderr`` is the
    sample standard deviation / √n_samples.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    _random_like(torch.zeros(1), torch.Generator(), distribution)  # validate early
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with _probing(model, params) as sel:
        op = _HessianOperator(model, _on_device(batches, model), [p for _, p in sel], loss_fn)
        samples = [s[0] for s in _hutchinson(op, n_samples, gen, distribution)]
        n_hvp = op.n_hvp
        del op
    trace, stderr = _mean_stderr(samples)
    return TraceResult(trace, stderr, samples, n_hvp, time.perf_counter() - t0)


def _eps_from_grad(ts: list[torch.Tensor | None], u: list[torch.Tensor], g: list[torch.Tensor], alpha: float,
                   rho: float) -> list[torch.Tensor]:
    """One normalised ascent step of length `alpha` in the (scaled) coordinates u = ε/T, projected on ‖u‖ ≤ ρ."""
    tg = [g_i if t is None else t * g_i for t, g_i in zip(ts, g)]
    norm = math.sqrt(_dot(tg, tg))
    u = [u_i + (alpha / (norm + 1e-12)) * d for u_i, d in zip(u, tg)]
    u_norm = math.sqrt(_dot(u, u))
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
    with _probing(model, params) as sel:
        ps = [p for _, p in sel]
        bs = _on_device(batches, model)
        w0 = [p.detach().clone() for p in ps]
        ts = [(w.abs() + eta) if adaptive else None for w in w0]
        loss0, g = _loss_and_grad(model, bs, ps, loss_fn)
        u = [torch.zeros_like(p) for p in ps]
        best, best_u = -math.inf, u
        for s in range(steps):
            u = _eps_from_grad(ts, u, g, rho if s == 0 else 2.0 * rho / steps, rho)
            with torch.no_grad():
                for p, w, t, u_i in zip(ps, w0, ts, u):
                    p.copy_(w + (u_i if t is None else t * u_i))
            if s < steps - 1:
                loss_s, g = _loss_and_grad(model, bs, ps, loss_fn)
            else:
                loss_s = _loss(model, bs, loss_fn)
            if loss_s > best:
                best, best_u = loss_s, u
        eps = [u_i if t is None else t * u_i for t, u_i in zip(ts, best_u)]
        pert = {n: e.detach().clone() for (n, _), e in zip(sel, eps)} if return_perturbation else None
        result = EpsSharpnessResult(best - loss0, loss0, best, rho, adaptive, steps,
                                    math.sqrt(_dot(best_u, best_u)), math.sqrt(_dot(eps, eps)), pert)
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
    with _probing(model, names) as sel:
        op = _HessianOperator(model, _on_device(batches, model), [p for _, p in sel], loss_fn)
        if measure == "trace":
            samples = _hutchinson(op, n_samples, gen, distribution, blocks=[[i] for i in range(len(sel))])
            values = torch.tensor(samples, dtype=torch.float64).mean(0).tolist()
        else:
            values = [_eig_lanczos(op, 1, max_iter, tol, gen, False, idx=[i])[0][0] for i in range(len(sel))]
        del op
    return dict(zip(mods, values))


def spectral_density(model: nn.Module, batches: Any, n_runs: int = 1, n_iter: int = 60, seed: int = 0,
                     params: Sequence[str] | None = None, loss_fn: LossFn = F.cross_entropy,
                     distribution: str = "rademacher") -> SpectralDensity:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019) of the Hessian eigenvalue density.

    Each of `n_runs` runs starts Lanczos (full reorthogonalisation, `n_iter` steps) from a random
    unit vector; the Ritz values are the nodes and the squared first components of the Ritz
    vectors, divided by `n_runs`, the weights. Cost: n_runs × n_iter products.
    """
    if n_runs < 1 or n_iter < 1:
        raise ValueError("n_runs and n_iter must be >= 1")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    nodes, weights, run = [], [], []
    with _probing(model, params) as sel:
        op = _HessianOperator(model, _on_device(batches, model), [p for _, p in sel], loss_fn)
        for r in range(n_runs):
            v0 = _flat([_random_like(p, gen, distribution) for p in op.ps])
            alphas, betas, _, _ = _lanczos(op.flat_matvec(), v0, n_iter)
            theta, s = torch.linalg.eigh(_tridiag(alphas, betas))
            nodes.append(theta)
            weights.append(s[0] ** 2 / n_runs)
            run.append(torch.full_like(theta, r, dtype=torch.long))
        n_params, n_hvp = op.n, op.n_hvp
        del op
    return SpectralDensity(torch.cat(nodes), torch.cat(weights), torch.cat(run), n_params, n_hvp,
                           time.perf_counter() - t0)


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
    with _probing(model, params) as sel:
        ps = [p for _, p in sel]
        bs = _on_device(batches, model)
        op = _HessianOperator(model, bs, ps, loss_fn)
        samples: list[float] = []
        if n_samples > 0:
            v0 = _flat([_random_like(p, gen, "rademacher") for p in ps])
            values, _, converged, alpha0 = _eig_lanczos(op, 1, max_iter, tol, gen, False, v0=v0)
            samples = [alpha0 * float(v0.double().norm()) ** 2]  # v0ᵀHv0 = ‖v0‖² q1ᵀHq1
            samples += [s[0] for s in _hutchinson(op, n_samples - 1, gen, "rademacher")]
        else:
            values, _, converged, _ = _eig_lanczos(op, 1, max_iter, tol, gen, False)
        n_hvp = op.n_hvp
        if op.grad is not None:
            loss0, g = op.loss, op.grad
        else:
            loss0, g = _loss_and_grad(model, bs, ps, loss_fn)
        del op  # free the graphs before the weights are perturbed in place
        w0 = [p.detach().clone() for p in ps]
        ts = [w.abs() if adaptive else None for w in w0]
        u = _eps_from_grad(ts, [torch.zeros_like(p) for p in ps], g, rho, rho)
        with torch.no_grad():
            for p, w, t, u_i in zip(ps, w0, ts, u):
                p.copy_(w + (u_i if t is None else t * u_i))
        perturbed = _loss(model, bs, loss_fn)
    trace, stderr = _mean_stderr(samples) if samples else (float("nan"), float("nan"))
    return {
        "loss": loss0, "lambda_max": values[0], "lambda_max_converged": converged,
        "trace": trace, "trace_stderr": stderr, "eps_sharpness": perturbed - loss0,
        "perturbed_loss": perturbed, "rho": rho, "adaptive": adaptive, "n_hvp": n_hvp,
        "seconds": time.perf_counter() - t0,
    }
