"""Shared plumbing for probes: run on a model and leave it exactly as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def as_batches(batches: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Materialise `batches` (a DataLoader, a list of (x, y), or one (x, y) pair) as a list of pairs."""
    pair = isinstance(batches, (tuple, list)) and len(batches) == 2 and all(torch.is_tensor(b) for b in batches)
    if pair and batches[0].ndim >= 2 and batches[1].ndim == 1 and len(batches[0]) == len(batches[1]):
        return [(batches[0], batches[1])]
    out = [(b[0], b[1]) for b in batches]
    if not out:
        raise ValueError("no batches given: pass an iterable of (x, y) pairs")
    return out


def mean_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """Example-weighted mean loss over `batches` (keeps the autograd graph)."""
    total, n = 0.0, 0
    for x, y in batches:
        total = total + loss_fn(model(x), y) * len(y)
        n += len(y)
    return total / n
