"""Feeding calibration images through a model and reading its layers' inputs (Wanda, PTQ)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn


def iter_inputs(batches: Iterable[Any], limit: int | None = None) -> Iterator[torch.Tensor]:
    """Inputs of an iterable of batches: ``(x, y)`` tuples, ``{"x": ...}`` dicts or bare tensors."""
    seen = 0
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) else (b["x"] if isinstance(b, dict) else b)
        if not torch.is_tensor(x):
            raise ValueError(f"calibration batches must be tensors or (x, y) pairs, got {type(x).__name__}")
        yield x
        seen += len(x)
        if limit is not None and seen >= limit:
            return


@torch.no_grad()
def for_each_layer_input(model: nn.Module, layers: dict[str, nn.Module], calib: Iterable[Any],
                         fn: Callable[[str, torch.Tensor], None], limit: int | None = None,
                         purpose: str = "calibration") -> int:
    """Run `model` in eval mode over the calibration images and call ``fn(name, rows)`` for each layer's input.

    ``rows`` has shape (positions, channels), float32: a Linear's input (..., in_features) flattened, a
    Conv2d's (B, C, H, W) as (B*H*W, C). Returns the number of images; raises ValueError when there are none.
    The model's train/eval mode is restored.
    """

    def hook(name):
        def on_forward(mod, inputs, _out):
            x = inputs[0].detach().float()
            x = x.movedim(1, -1) if isinstance(mod, nn.Conv2d) else x
            fn(name, x.reshape(-1, x.shape[-1]))
        return on_forward

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        device = next(model.parameters()).device
        for x in iter_inputs(calib, limit=limit):
            model(x.to(device))
            seen += len(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError(f"the calibration set is empty: {purpose} needs calibration images (calib=...)")
    return seen
