"""Feeding calibration images through a model and reading its layers' inputs (Wanda, PTQ, BatchNorm)."""

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
    return run_calibration(model, calib, handles, limit, purpose)


@torch.no_grad()
def run_calibration(model: nn.Module, calib: Iterable[Any], handles: list[Any], limit: int | None = None,
                    purpose: str = "calibration") -> int:
    """Forward the calibration images through `model` in eval mode (its mode restored), then remove the hook
    `handles`. Returns the number of images; raises ValueError naming `purpose` when there are none."""
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


class RangeObserver:
    """Running statistics of one layer's input rows over every calibration batch.

    ``lo``/``hi``: exact running min/max, per channel (shape (C,)) or per tensor (shape ()).
    ``sample``: with ``sample_values > 0``, a uniform random subsample (without replacement) of the
    rows seen so far, across ALL batches, at most ``sample_values // C`` rows: each row draws a key
    from a local seeded generator and the rows with the smallest keys are kept (bottom-k reservoir
    sampling), so every batch is equally likely to contribute. When every row fits, the sample is all
    of them. Percentile and MSE estimators
    read the sample; min-max needs none.
    """

    def __init__(self, per_channel: bool, sample_values: int = 0, seed: int = 0):
        self.per_channel = per_channel
        self.sample_values = sample_values
        self.gen = torch.Generator().manual_seed(seed) if sample_values else None
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.rows_seen = 0
        self._rows: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> None:
        """Add a (positions, channels) block of input values."""
        rows = rows.detach()
        if rows.numel() == 0:
            return
        lo, hi = (rows.amin(0), rows.amax(0)) if self.per_channel else (rows.amin(), rows.amax())
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.rows_seen += rows.shape[0]
        if not self.sample_values:
            return
        cap = max(1, self.sample_values // rows.shape[1])
        keys = torch.rand(rows.shape[0], generator=self.gen)
        if self._keys is not None and len(self._keys) >= cap:  # full: only keys below the current k-th can enter
            enter = keys < self._keys.max()
            keys, rows = keys[enter], rows[enter.to(rows.device)]
        rows = rows.cpu()
        if self._keys is not None:
            keys, rows = torch.cat([self._keys, keys]), torch.cat([self._rows, rows])
        if len(keys) > cap:
            idx = torch.topk(keys, cap, largest=False).indices
            keys, rows = keys[idx], rows[idx]
        self._keys, self._rows = keys, rows

    @property
    def sample(self) -> torch.Tensor | None:
        """The (rows, channels) subsample (None without ``sample_values``)."""
        return self._rows
