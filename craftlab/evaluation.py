"""Accuracy and loss of a model on a loader."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable[Any], device: str | torch.device | None = None,
             max_batches: int | None = None) -> dict[str, float]:
    """Top-1 ``accuracy`` (fraction in [0, 1]), mean cross-entropy ``loss`` and ``n`` examples.

    `loader` yields (x, y) pairs; a :class:`~craftlab.data.DataBundle` means its test split.
    The model's train/eval mode is restored afterwards.

    Example::

        data = craftlab.load_data("digits", model=model)
        craftlab.evaluate(model, data.test)      # {'accuracy': 0.97..., 'loss': 0.1...}
    """
    from .data import DataBundle

    if isinstance(loader, DataBundle):
        loader = loader.test
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    correct, total_loss, n = 0, 0.0, 0
    try:
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate got no examples (empty loader)")
    return {"accuracy": correct / n, "loss": total_loss / n, "n": n}
