"""The modules compensation adds (QwT side paths, channel-wise affines) and folding the affines away.

Why a channel-wise affine folds for free [DERIVED; the QwT-v2 paper text was not available]: a
quantized layer computes ``y_c = s_c · (W_int x_q)_c + bias_c`` with ``s_c`` its per-output-channel
weight scale, so ``a_c·y_c + b_c = (a_c s_c)·(W_int x_q)_c + (a_c bias_c + b_c)``. The gain goes into
the scale (integer weights unchanged) and the offset into the bias. CraftLab's quantized layers store
the dequantized weight ``(q − z)·s`` (no separate scale tensor), so scaling row c by a_c is exactly
``s_c ← a_c·s_c`` with the same integers q and zero point z: the row keeps at most 2^b distinct values.

A negative gain gives a negative scale. That is exact here. For an engine that needs positive scales:
an asymmetric grid ``q ∈ [0, 2^b − 1]`` can always be flipped (``q' = 2^b − 1 − q``, ``z' = 2^b − 1 − z``,
scale ``|a_c| s_c``); a symmetric grid can be negated unless the row uses ``q = −2^(b−1)`` (min-max
ranges never do). Each fold row reports the number of negative gains.

A layer without a bias (a conv before BatchNorm, as in timm ResNets) takes the offset into that
BatchNorm's running mean (``μ ← μ − b``, exact in eval mode) when compensation recorded that the
BatchNorm reads the layer's output directly; otherwise a bias is created (C parameters, reported).
QwT's full matrices mix channels and cannot fold into a per-channel scale: they are left in place.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class QwTBlock(nn.Module):
    """A block plus its QwT side path: ``block(x) + compensation(x)`` (a Linear on channels-last
    tokens, or a 1×1 Conv2d with the block's stride). It does not fold."""

    def __init__(self, block: nn.Module, compensation: nn.Module) -> None:
        super().__init__()
        self.block, self.compensation = block, compensation

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.block(x, *args, **kwargs) + self.compensation(x)


class ChannelAffine(nn.Module):
    """``module(...) · gain + offset`` per channel along `channel_dim` (QwT-v2's CWAC before folding)."""

    def __init__(self, module: nn.Module, gain: torch.Tensor, offset: torch.Tensor, channel_dim: int) -> None:
        super().__init__()
        self.module, self.channel_dim = module, channel_dim
        self.gain, self.offset = nn.Parameter(gain), nn.Parameter(offset)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.module(*args, **kwargs)
        shape = [1] * y.ndim
        shape[self.channel_dim] = -1
        return y * self.gain.view(shape) + self.offset.view(shape)


def _foldable(w: ChannelAffine) -> bool:
    m = w.module
    return (isinstance(m, nn.Conv2d) and w.channel_dim == 1) or (isinstance(m, nn.Linear) and w.channel_dim == -1)


@torch.no_grad()
def _fold_one(w: ChannelAffine) -> str:
    mod, a, b = w.module, w.gain.detach(), w.offset.detach()
    mod.weight.mul_(a.view(-1, *[1] * (mod.weight.ndim - 1)))
    if mod.bias is not None:
        mod.bias.mul_(a).add_(b)
        return "gain -> weight scale, offset -> bias"
    bn = w.__dict__.get("_next_bn")
    if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.num_features == b.numel():
        bn.running_mean.sub_(b.to(bn.running_mean.dtype))
        return "gain -> weight scale, offset -> next BatchNorm's running mean"
    mod.bias = nn.Parameter(b.clone())
    return f"gain -> weight scale, offset -> a new bias ({b.numel()} parameters added)"


def fold_compensation(model: nn.Module) -> nn.Module:
    """A copy of `model` with every channel-wise affine on a Linear/Conv2d output folded into that layer.

    The folded model has no ChannelAffine modules left on layers and keeps each quantized weight row on its
    integer grid (scaled by its gain). The fold is an identity in exact arithmetic (in float64 the outputs
    agree to ~1e-8), not in float32: ``(a*s)*z`` and ``a*(s*z)`` round differently, and a value on the edge
    of a downstream activation quantizer's code can move one code, so float32 outputs can differ by more
    than rounding and a few top-1 predictions may change (notebook 03 measures both). QwT side
    paths and affines on other modules (e.g. block outputs) are left as they are. What happened to
    each is recorded in ``model.craftlab_compression["compensation"]["fold"]`` (a list of dicts).

    Example::

        res = compensate(q, model, data.calib, method="qwt-v2")
        folded = fold_compensation(res.model)
    """
    new = copy.deepcopy(model)
    found = [(f"{pn}.{cn}".lstrip("."), parent, cn, child) for pn, parent in new.named_modules()
             for cn, child in parent._modules.items() if isinstance(child, (QwTBlock, ChannelAffine))]
    rows = []
    for name, parent, child_name, child in found:
        row: dict[str, Any] = {"name": name, "folded": False, "negative_gains": 0}
        if isinstance(child, QwTBlock):
            row["how"] = "not folded: QwT's full matrix mixes channels, so it stays an extra module"
        elif not _foldable(child):
            row["how"] = "not folded: the affine is not on a Linear/Conv2d output (e.g. a block output)"
        else:
            row.update(folded=True, negative_gains=int((child.gain < 0).sum()), how=_fold_one(child))
            setattr(parent, child_name, child.module)
        rows.append(row)
    info = dict(getattr(model, "craftlab_compression", {}))
    info["compensation"] = {**info.get("compensation", {}), "fold": rows}
    new.craftlab_compression = info
    return new
