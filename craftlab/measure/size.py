"""THE size measure: a model's weights at their stored bit-widths.

* A parameter's **size in bits** = its elements × its bits: the quantized weights at their ``w_bits``, every other
  parameter at its dtype's width (32 for float32).
* **size_mb** = size_bits / 8 / 2**20 (MiB, written "MB" in the tables).

Example::

    >>> size_mb(8 * 2**20)
    1.0
    >>> net = torch.nn.Linear(4, 2)
    >>> model_size(net, {"weight": 4})["size_bits"]   # 8 weights at 4 bits + 2 float32 biases
    96
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["dtype_bits", "model_size", "size_mb"]


def dtype_bits(dtype: torch.dtype) -> int:
    """Bits of one element of a float `dtype` (32 for float32, 16 for bfloat16).

    >>> dtype_bits(torch.float16)
    16
    """
    return 32 if dtype == torch.float32 else torch.finfo(dtype).bits


def size_mb(size_bits: float) -> float:
    """Bits → MiB (2^20 bytes).

    >>> size_mb(4 * 8 * 2**20)
    4.0
    """
    return size_bits / 8 / 2**20


def model_size(model: nn.Module, weight_bits: Mapping[str, int] | None = None) -> dict[str, float]:
    """``params``, ``nonzero_params``, ``size_bits`` and ``size_mb`` of `model`: the parameters named in
    `weight_bits` (``"layer.weight" → bits``) at those bits, every other one at its dtype's width.

    >>> model_size(torch.nn.Linear(3, 1))
    {'params': 4, 'nonzero_params': 4, 'size_bits': 128, 'size_mb': 1.52587890625e-05}
    """
    weight_bits = weight_bits or {}
    size_bits, params, nonzero = 0, 0, 0
    for name, p in model.named_parameters():
        size_bits += p.numel() * weight_bits.get(name, dtype_bits(p.dtype))
        params += p.numel()
        nonzero += int((p != 0).sum())
    return {"params": params, "nonzero_params": nonzero, "size_bits": size_bits, "size_mb": size_mb(size_bits)}
