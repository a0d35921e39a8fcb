"""The Hessian of the mean loss: Hessian-vector products, top eigenvalues (Lanczos, power iteration),
Hutchinson's trace and the spectral density (stochastic Lanczos quadrature).

Every probe runs the model in eval mode (BatchNorm uses running statistics, no dropout) inside
:func:`craftlab.probes._probe.preserved`, so the model comes back bit-identical: parameters, buffers,
``requires_grad`` flags, ``.grad`` and train/eval flags. Results therefore do not depend on whether
the model was in train or eval mode.

Common arguments:

- ``batches``: one ``(x, y)`` pair or an iterable of pairs (a DataLoader, a list). The loss is the
  example-weighted mean over all examples, so the Hessian is that of the mean loss.
- ``params``: names (as in ``model.named_parameters()``) of the parameters the Hessian is taken
  with respect to; default: every parameter with ``requires_grad=True``. Other parameters are held
  fixed (their ``requires_grad`` is switched off during the probe and restored afterwards).
- ``loss_fn``: ``loss_fn(logits, y) -> scalar mean loss``; default cross-entropy.

Hessian-vector products use Pearlmutter's trick (double backward); :class:`HessianOperator` is the one
implementation, shared by every probe in this package. The gradient graph of each batch is built once
and reused across products when there are at most ``MAX_CACHED_BATCHES`` batches; with more batches it
is rebuilt per product (less memory, one extra forward+backward per batch and product). Attention goes
through PyTorch's "math" SDPA kernel while the graph is built (:func:`~craftlab.probes._probe.math_attention`),
because the fused CPU/CUDA attention kernels do not implement double backward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import unknown_name
from ._probe import (
    LossFn,
    batch_weights,
    flat,
    inner,
    loss_and_grad,
    math_attention,
    mean_loss,
    on_device,
    probing,
    random_like,
    unflat,
)
from .lanczos import TopEigen, lanczos, rel_change, top_eigenpairs, tridiagonal
from .results import EigenResult, SpectralDensity, TraceResult, density_on_grid

__all__ = [
    "EigenResult",
    "HessianOperator",
    "SpectralDensity",
    "TraceResult",
    "density_on_grid",
    "hessian_trace",
    "hessian_vector_product",
    "spectral_density",
    "top_hessian_eigenvalues",
]

MAX_CACHED_BATCHES = 4
"""Keep the double-backward graphs of at most this many batches alive across HVPs."""


class HessianOperator:
    """H v for the mean loss over `batches`, w.r.t. `ps` (to be used inside :func:`~._probe.probing`)."""

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], ps: list[torch.Tensor],
                 loss_fn: LossFn, cache: bool | None = None):
        self.model, self.batches, self.ps, self.loss_fn = model, batches, ps, loss_fn
        self.w = batch_weights(batches)
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
        with math_attention():
            loss = mean_loss(self.model, [(x, y)], self.loss_fn) * w
            gs = torch.autograd.grad(loss, self.ps, create_graph=True, allow_unused=True)
        return loss, gs

    def loss_and_grad(self) -> tuple[float, list[torch.Tensor]]:
        """Mean loss and gradient at the current weights (free when the graphs are cached)."""
        if self.grad is not None:
            return self.loss, self.grad
        return loss_and_grad(self.model, self.batches, self.ps, self.loss_fn)

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
            with math_attention():
                hv = torch.autograd.grad(outs, inputs, grad_outputs=gos, retain_graph=self.cache, allow_unused=True)
            for acc, h in zip(out, hv):
                if h is not None:
                    acc.add_(h)
        self.n_hvp += 1
        return out

    def flat_matvec(self, idx: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        like = self.ps if idx is None else [self.ps[i] for i in idx]
        return lambda v: flat(self.matvec(unflat(v, like), idx), v.dtype)


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
    with probing(model, params) as sel:
        vs = [vec_list[n] for n, _ in sel] if as_dict else list(vec_list)
        if len(vs) != len(sel) or any(tuple(v.shape) != tuple(p.shape) for v, (_, p) in zip(vs, sel)):
            raise ValueError("vec_list must hold one tensor per probed parameter, with the parameter's shape; "
                             f"expected shapes {[tuple(p.shape) for _, p in sel]}")
        ps = [p for _, p in sel]
        op = HessianOperator(model, on_device(batches, model), ps, loss_fn)
        hv = [h.detach().clone() for h in op.matvec([v.to(device=p.device, dtype=p.dtype) for v, p in zip(vs, ps)])]
        del op
    return {n: h for (n, _), h in zip(sel, hv)} if as_dict else hv


def eig_lanczos(op: HessianOperator, k: int, max_iter: int, tol: float, gen: torch.Generator, vectors: bool,
                idx: Sequence[int] | None = None, v0: torch.Tensor | None = None) -> TopEigen:
    """:func:`~.lanczos.top_eigenpairs` of the block H[idx, idx] (default: all of H), Gaussian start vectors
    from `gen`. Returns (values, vectors (k × n) or None, converged, q1ᵀHq1 of the first start, runs)."""
    like = op.ps if idx is None else [op.ps[i] for i in idx]

    def new_start() -> torch.Tensor:
        return flat([torch.randn(p.shape, generator=gen, dtype=op.dtype).to(p.device) for p in like])

    return top_eigenpairs(op.flat_matvec(idx), sum(p.numel() for p in like), k, max_iter, tol, new_start,
                          v0=v0, vectors=vectors)


def gradient_start(op: HessianOperator, gen: torch.Generator) -> torch.Tensor:
    """The first Lanczos start vector of the top eigenvalues: a Gaussian draw from `gen` (unit norm) plus the
    unit gradient of the mean loss.

    The gradient lies mostly in the span of the top Hessian eigenvectors (Gur-Ari et al. 2018, "Gradient
    descent happens in a tiny subspace"), so the run starts closer to them and converges in fewer products; the
    random part keeps a component along every eigenvector (with probability 1), so nothing is missed that a
    purely random start would find. Free when the gradient graphs are cached (the gradient comes with them);
    otherwise one forward and backward per batch. A zero or non-finite gradient leaves the random draw alone.
    """
    r = flat([torch.randn(p.shape, generator=gen, dtype=op.dtype).to(p.device) for p in op.ps])
    r = r / r.norm()
    g = flat(op.loss_and_grad()[1], r.dtype)
    g_norm = float(g.norm())
    return r + g / g_norm if 0 < g_norm < math.inf else r


def _eig_power(op: HessianOperator, k: int, max_iter: int, tol: float,
               gen: torch.Generator) -> tuple[list[float], torch.Tensor, bool]:
    """PyHessian's method: power iteration, re-orthogonalised against the eigenvectors found so far.

    When H v vanishes (v in the null space of the deflated Hessian) the eigenvalue is exactly 0 and v
    its eigenvector.
    """
    mv = op.flat_matvec()
    found: list[torch.Tensor] = []
    values: list[float] = []
    all_converged = True
    for _ in range(k):
        v = flat([torch.randn(p.shape, generator=gen, dtype=op.dtype).to(p.device) for p in op.ps])
        v = v / v.norm()
        lam: float | None = None
        converged = False
        for _ in range(max_iter):
            for u in found:
                v = v - torch.dot(v, u) * u
            v = v / v.norm()
            hv = mv(v)
            new = float(torch.dot(hv.double(), v.double()))
            hv_norm = float(hv.norm())
            if hv_norm <= torch.finfo(hv.dtype).tiny:
                lam, converged = 0.0, True  # H v = 0: an exact zero eigenvalue
                break
            v = hv / hv_norm
            if lam is not None and rel_change(new, lam) < tol:
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
    """The `k` largest-magnitude eigenvalues of the Hessian of the mean loss, repeated ones repeated.

    ``method="lanczos"`` (default): Lanczos with full reorthogonalisation, the first run started from a
    random vector plus the loss gradient (:func:`gradient_start`: fewer products, same answer); a run stops
    when its top Ritz values change by less than `tol` (relative) between steps and their error estimates are
    below tol;
    for k ≥ 2, restarts in the orthogonal complement of the eigenvectors found detect repeated
    eigenvalues (:func:`~craftlab.probes.lanczos.top_eigenpairs`; typically one extra run from a purely random
    vector, which stops after a few products once its top Ritz value settles clearly below the k-th value, and
    converges fully only when a cluster reaches it). `max_iter`
    caps the total number of Hessian-vector products and must be ≥ k. ``method="power"``: PyHessian's power iteration
    with deflation by re-orthogonalisation, same relative-change test per eigenvalue, `max_iter` products
    per eigenvalue (the baseline; typically several times slower).

    Always returns exactly k values (a ValueError when k exceeds the number of probed parameters, or
    `max_iter` < k for Lanczos); ``converged`` says whether the stopping tests were met.
    """
    if method not in ("lanczos", "power"):
        raise unknown_name("method", method, ("lanczos", "power"))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_iter < (k if method == "lanczos" else 1):
        raise ValueError(f"max_iter={max_iter} is too small for k={k}: Lanczos needs at least k Hessian-vector "
                         "products in all (and typically ~10-30 per eigenvalue to converge); raise max_iter"
                         if method == "lanczos" else f"max_iter must be >= 1, got {max_iter}")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    runs = 1
    with probing(model, params) as sel:
        ps = [p for _, p in sel]
        op = HessianOperator(model, on_device(batches, model), ps, loss_fn)
        if k > op.n:
            raise ValueError(f"k={k} exceeds the number of probed parameters ({op.n})")
        if method == "lanczos":
            values, vecs, converged, _, runs = eig_lanczos(op, k, max_iter, tol, gen, return_eigenvectors,
                                                           v0=gradient_start(op, gen))
        else:
            values, vecs, converged = _eig_power(op, k, max_iter, tol, gen)
        eigvecs = None
        if return_eigenvectors and vecs is not None:
            eigvecs = [{n: t.detach().clone() for (n, _), t in zip(sel, unflat(v, ps))} for v in vecs]
        n_hvp = op.n_hvp
        del op
    return EigenResult(values, eigvecs, n_hvp, converged, method, time.perf_counter() - t0, runs)


# ----------------------------------------------------------------------------------------------
# trace and spectral density


def hutchinson(op: HessianOperator, n_samples: int, gen: torch.Generator, distribution: str,
               blocks: Sequence[Sequence[int]] | None = None) -> list[list[float]]:
    """Per sample: vᵀHv, or with `blocks` the per-block parts v_bᵀ(Hv)_b (one joint product per sample)."""
    out = []
    for _ in range(n_samples):
        v = [random_like(p, gen, distribution) for p in op.ps]
        hv = op.matvec(v)
        if blocks is None:
            out.append([inner(v, hv)])
        else:
            out.append([inner([v[i] for i in b], [hv[i] for i in b]) for b in blocks])
    return out


def mean_stderr(xs: Sequence[float]) -> tuple[float, float]:
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
    random_like(torch.zeros(1), torch.Generator(), distribution)  # validate early
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with probing(model, params) as sel:
        op = HessianOperator(model, on_device(batches, model), [p for _, p in sel], loss_fn)
        samples = [s[0] for s in hutchinson(op, n_samples, gen, distribution)]
        n_hvp = op.n_hvp
        del op
    trace, stderr = mean_stderr(samples)
    return TraceResult(trace, stderr, samples, n_hvp, time.perf_counter() - t0)


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
    with probing(model, params) as sel:
        op = HessianOperator(model, on_device(batches, model), [p for _, p in sel], loss_fn)
        for r in range(n_runs):
            v0 = flat([random_like(p, gen, distribution) for p in op.ps])
            alphas, betas, _, _ = lanczos(op.flat_matvec(), v0, n_iter)
            theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
            nodes.append(theta)
            weights.append(s[0] ** 2 / n_runs)
            run.append(torch.full_like(theta, r, dtype=torch.long))
        n_params, n_hvp = op.n, op.n_hvp
        del op
    return SpectralDensity(torch.cat(nodes), torch.cat(weights), torch.cat(run), n_params, n_hvp,
                           time.perf_counter() - t0)
