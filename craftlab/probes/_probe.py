"""Shared plumbing for probes: run on a model and leave it exactly as it was; batches, flat vectors,
gradients, and the attention kernel that supports double backward."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import unknown_name

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def preserved(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Snapshot parameters, buffers, ``requires_grad`` flags, ``.grad`` and train/eval mode; restore on exit.

    Inside, the model is in eval mode (BatchNorm uses running statistics, no dropout) unless
    ``eval_mode=False``. Restoration is bit-exact.
    """
    params = {n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.detach().clone())
              for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    if eval_mode:
        model.eval()
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                data, req, grad = params[n]
                p.copy_(data)
                p.requires_grad_(req)
                p.grad = grad
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        for n, m in model.named_modules():
            if n in modes:
                m.training = modes[n]


_MATH_LOCK = threading.Lock()
_MATH_STATE: dict[str, Any] = {"depth": 0, "context": None}


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """SDPA restricted to the composite "math" kernel: the fused CPU/CUDA attention kernels have no
    double backward, which Hessian-vector products need.

    torch's kernel switches are process-wide, not per thread; the restriction is therefore shared: the first
    thread to enter sets it, the last to leave lifts it (without this, one thread leaving would re-enable the fused
    kernels under another thread's Hessian-vector product, as happens when the app probes both arms at once).
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - very old torch
        yield
        return
    with _MATH_LOCK:
        if _MATH_STATE["depth"] == 0:
            ctx = sdpa_kernel([SDPBackend.MATH])
            ctx.__enter__()
            _MATH_STATE["context"] = ctx
        _MATH_STATE["depth"] += 1
    try:
        yield
    finally:
        with _MATH_LOCK:
            _MATH_STATE["depth"] -= 1
            if _MATH_STATE["depth"] == 0:
                _MATH_STATE.pop("context").__exit__(None, None, None)
                _MATH_STATE["context"] = None


# ----------------------------------------------------------------------------------------------
# batches and losses


def as_batches(batches: Any) -> list[Batch]:
    """Materialise `batches` (a DataLoader, a list of (x, y), or one (x, y) pair) as a list of pairs."""
    pair = isinstance(batches, (tuple, list)) and len(batches) == 2 and all(torch.is_tensor(b) for b in batches)
    if pair and batches[0].ndim >= 2 and batches[1].ndim == 1 and len(batches[0]) == len(batches[1]):
        return [(batches[0], batches[1])]
    out = [(b[0], b[1]) for b in batches]
    if not out:
        raise ValueError("no batches given: pass an iterable of (x, y) pairs")
    return out


def on_device(batches: Any, model: nn.Module) -> list[Batch]:
    """:func:`as_batches`, moved to the device of the model's first parameter."""
    out = as_batches(batches)
    p = next(model.parameters(), None)
    if p is None:
        return out
    return [(x.to(p.device), y.to(p.device)) for x, y in out]


def batch_weights(batches: Sequence[Batch]) -> list[float]:
    """Each batch's share of the examples (the weights of the example-weighted mean loss)."""
    n = sum(len(y) for _, y in batches)
    return [len(y) / n for _, y in batches]


def mean_loss(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """Example-weighted mean loss over `batches` (keeps the autograd graph)."""
    total, n = 0.0, 0
    for x, y in batches:
        total = total + loss_fn(model(x), y) * len(y)
        n += len(y)
    return total / n


def loss_value(model: nn.Module, batches: list[Batch], loss_fn: LossFn) -> float:
    """The mean loss as a float (no graph)."""
    with torch.no_grad():
        return float(mean_loss(model, batches, loss_fn))


def loss_and_grad(model: nn.Module, batches: list[Batch], ps: Sequence[torch.Tensor],
                  loss_fn: LossFn) -> tuple[float, list[torch.Tensor]]:
    """Mean loss and its gradient w.r.t. `ps`, accumulated batch by batch (no graph kept)."""
    total, grads = 0.0, [torch.zeros_like(p) for p in ps]
    for (x, y), w in zip(batches, batch_weights(batches)):
        loss = mean_loss(model, [(x, y)], loss_fn) * w
        gs = torch.autograd.grad(loss, list(ps), allow_unused=True)
        for acc, g in zip(grads, gs):
            if g is not None:
                acc.add_(g)
        total += float(loss.detach())
    return total, grads


# ----------------------------------------------------------------------------------------------
# probed parameters


def select_params(model: nn.Module, params: Sequence[str] | str | None) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs for `params` (names; default: every parameter with ``requires_grad``)."""
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
def probing(model: nn.Module, params: Sequence[str] | str | None) -> Iterator[list[tuple[str, nn.Parameter]]]:
    """`preserved(model)` (eval mode, exact restore) with gradients switched on only for the probed params."""
    sel = select_params(model, params)
    with preserved(model):
        ids = {id(p) for _, p in sel}
        for p in model.parameters():
            p.requires_grad_(id(p) in ids)
        yield sel


# ----------------------------------------------------------------------------------------------
# vectors over several parameters


def flat(ts: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Concatenate tensors into one flat vector (optionally cast)."""
    return torch.cat([t.reshape(-1).to(dtype) if dtype else t.reshape(-1) for t in ts])


def unflat(v: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of :func:`flat`: views of `v` with the shapes (and dtypes) of `like`."""
    out, i = [], 0
    for p in like:
        out.append(v[i:i + p.numel()].view(p.shape).to(p.dtype))
        i += p.numel()
    return out


def inner(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Σ_i ⟨a_i, b_i⟩ in float64."""
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def random_like(p: torch.Tensor, gen: torch.Generator, distribution: str) -> torch.Tensor:
    """Rademacher (±1) or standard Gaussian noise shaped like `p`, drawn on CPU (same numbers on any device)."""
    if distribution == "rademacher":
        v = torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1
    elif distribution == "gaussian":
        v = torch.randn(p.shape, generator=gen, dtype=p.dtype if p.dtype.is_floating_point else torch.float32)
    else:
        raise unknown_name("distribution", distribution, ("rademacher", "gaussian"))
    return v.to(device=p.device, dtype=p.dtype)
