"""BatchNorm re-estimation after pruning (or any weight change).

Pruning shifts the mean and variance of every channel after a pruned layer, so the running statistics
a BatchNorm learnt on the dense model no longer normalise its input: a ResNet pruned to 50 % with
stale statistics can fall to chance even though the weights are fine. Re-estimating the statistics
on a few calibration images (no gradient, no labels) fixes most of that.

:func:`recalibrate_bn` forwards the calibration set with the BatchNorm layers in train mode (each
normalises by its batch's statistics, as ``torch.optim.swa_utils.update_bn`` does) and everything
else in eval mode (dropout, drop-path off), without gradients. Each BatchNorm's running mean and
(unbiased) running variance are then set to the statistics of its input pooled over the whole
calibration set: exact, whatever the batch sizes (a ``momentum=None`` cumulative average of batch
statistics would weight a short last batch like a full one and miss the spread between batch means).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._calib import iter_inputs


def batchnorm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """BatchNorm modules (1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d) that keep running statistics."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}


class _PooledStats:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et al.)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, x: torch.Tensor) -> None:
        acc = torch.float32 if x.device.type == "mps" else torch.float64
        x = x.detach().to(acc).transpose(0, 1).reshape(x.shape[1], -1)  # (C, positions)
        nb = x.shape[1]
        if nb == 0:
            return
        mb = x.mean(1)
        m2b = (x - mb[:, None]).pow(2).sum(1)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta.pow(2) * (self.n * nb / n)
        self.n = n


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, calib: Iterable[Any], calib_samples: int | None = None) -> int:
    """Re-estimate `model`'s BatchNorm running statistics in place; returns the number of images used.

    A model without BatchNorm is left as it is (0 is returned). Train/eval flags are restored.
    """
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    if calib is None:
        raise ValueError("recalibrate_bn needs calibration data: pass calib=<DataLoader or batches>")
    stats = {name: _PooledStats() for name in bns}
    handles = [bn.register_forward_pre_hook(lambda _m, inputs, s=stats[name]: s.update(inputs[0]))
               for name, bn in bns.items()]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for bn in bns.values():
        bn.train()
    seen = batches = 0
    try:
        device = next(model.parameters()).device
        for x in iter_inputs(calib, limit=calib_samples):
            model(x.to(device))
            seen, batches = seen + len(x), batches + 1
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
    if seen == 0:
        raise ValueError("the calibration set is empty: recalibrate_bn needs calibration images (calib=...)")
    for name, bn in bns.items():
        s = stats[name]
        if s.mean is None:  # never ran on the calibration images: keep its statistics
            continue
        bn.running_mean.copy_(s.mean.to(bn.running_mean.dtype))
        bn.running_var.copy_((s.m2 / max(s.n - 1, 1)).to(bn.running_var.dtype))
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.fill_(batches)
    return seen


def recalibrate_bn(model: nn.Module, calib: Iterable[Any], calib_samples: int | None = None) -> nn.Module:
    """Return a copy of `model` whose BatchNorm running mean/variance are re-estimated on `calib`.

    Args:
        model: any model; it is not changed. Without BatchNorm layers the copy equals it.
        calib: calibration batches: a DataLoader or an iterable of ``(x, y)`` pairs or tensors.
        calib_samples: cap on calibration images (default: all).

    Each running mean/variance becomes the mean / unbiased variance of that layer's input pooled over
    the calibration images, with BatchNorm layers normalising by batch statistics during the pass and
    every other module in eval mode (see the module docstring).

    Example::

        q = craftlab.quantize(model, w_bits=4, a_bits=4, calib=data.calib)
        q = craftlab.recalibrate_bn(q, data.calib)     # the quantized model's own statistics, a new model
    """
    out = copy.deepcopy(model)
    recalibrate_bn_(out, calib, calib_samples=calib_samples)
    return out
