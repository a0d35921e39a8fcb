"""THE compute measure: MACs and BitOPs, one definition each.

* **MACs** of a Conv2d / Linear layer on one image: output elements × the inputs each one reads
  (``out.numel() / N · C_in/groups · kh · kw`` for a convolution, ``out.numel() / N · in_features`` for a Linear,
  the width read from the input so a sliced layer counts what it runs).
* **MACs of an attention block's two matmuls** (q·kᵀ and attn·v) on one image: ``2 · heads · N² · head_dim``.
* **BitOPs** = MACs · w_bits · a_bits, a float operand counted at :data:`FP_BITS` (32) bits.

:func:`forward_macs` counts them in one forward pass of one image (hooks; the model's mode restored). Every
BitOPs figure of CraftLab (``model_stats``, the supernet's ``cost`` and references, the PTQ baselines) is built
from these three functions.

Example::

    >>> bitops(1000, w_bits=4, a_bits=8), bitops(1000, None, None)
    (32000, 1024000)
    >>> attention_macs(num_heads=3, tokens=5, head_dim=64)
    9600
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["FP_BITS", "attention_macs", "bitops", "forward_macs", "layer_macs"]

FP_BITS = 32
"""The bits of a float operand in a BitOPs count (weights, activations or a layer left unquantized)."""


def bitops(macs: int, w_bits: int | None, a_bits: int | None) -> int:
    """MACs · w_bits · a_bits; None (float) counts as :data:`FP_BITS`.

    >>> bitops(10, 2, None)
    640
    """
    return int(macs) * (w_bits or FP_BITS) * (a_bits or FP_BITS)


def layer_macs(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """MACs per image of a Conv2d or Linear layer's call (the arguments of a forward hook).

    >>> conv = nn.Conv2d(3, 8, 3, padding=1)
    >>> x = torch.zeros(2, 3, 5, 5)
    >>> layer_macs(conv, (x,), conv(x))   # 8 x 5 x 5 outputs, each reads 3 x 3 x 3 inputs
    5400
    """
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw
    return output.numel() // output.shape[0] * inputs[0].shape[-1]


def attention_macs(num_heads: int, tokens: int, head_dim: int) -> int:
    """MACs of q·kᵀ plus attn·v of one image: ``2 · heads · N² · head_dim``.

    >>> attention_macs(3, 5, 64)
    9600
    """
    return 2 * num_heads * tokens * tokens * head_dim


@torch.no_grad()
def forward_macs(model: nn.Module, x: torch.Tensor, layers: Iterable[nn.Module] = (),
                 attention: Iterable[nn.Module] = ()) -> dict[nn.Module, int]:
    """MACs per image of each module in `layers` (Conv2d / Linear: :func:`layer_macs`) and `attention` (timm
    ``Attention``-like modules with ``num_heads`` and ``head_dim``: :func:`attention_macs`), from one forward pass of
    the first image of `x` in eval mode (the model's mode is restored; a module called twice counts twice; one
    never called is absent).

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(forward_macs(net, torch.zeros(5, 4), layers=[net[0], net[2]]).values())
    [12, 6]
    """
    counts: dict[nn.Module, int] = {}

    def add(mod: nn.Module, n: int) -> None:
        counts[mod] = counts.get(mod, 0) + n

    handles = [m.register_forward_hook(lambda mod, i, o: add(mod, layer_macs(mod, i, o))) for m in layers]
    handles += [m.register_forward_hook(lambda mod, i, o: add(mod, attention_macs(mod.num_heads, i[0].shape[1],
                                                                                   mod.head_dim)))
                for m in attention]
    was_training = model.training
    model.eval()
    try:
        first = next(iter(model.parameters()), None)
        model(x[:1] if first is None else x[:1].to(first.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts
