"""Quantized attention matmuls of a ViT supernet: q·kᵀ and attn·v on fake-quantized operands.

timm's ``Attention`` multiplies q by kᵀ and the attention probabilities by v in float. In a quantized deployment
those two matmuls run on integers too, and they are MACs (2·heads·N²·head_dim per image, N tokens) that a BitOPs
count must include. :func:`quantize_attention` turns a block's ``Attention`` into :class:`QuantAttention` (same
object, same weights, class changed in place on the supernet's private copy) whose forward quantizes

* q (after the 1/sqrt(head_dim) scale), k and v on signed ``a_bits`` grids (one LSQ step per tensor),
* the softmax probabilities on an unsigned ``a_bits`` grid (``[0, 2^b - 1]``, one step per tensor),

with ``a_bits`` **tied to the activation bits of the block's qkv layer** (the block's attention input): a subnet's
genes do not change, its cost does. Steps are LSQ-trained with everything else; q/k/v steps are initialized by
craftlab's MSE range search on calibration inputs, the probability step at ``1/(2^b - 1)`` (the [0, 1] range).
An exported subnet keeps the module with its bits fixed, so it computes exactly the supernet's outputs.

BitOPs convention (every figure of the supernet): Σ over Conv2d/Linear MACs · w_bits · a_bits (unsearched layers,
the patch embedding and the head, at 32x32) **plus** Σ over attention matmuls MACs · a_bits · a_bits.

Example::

    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3)
    >>> attn = quantize_attention(vit.blocks[0].attn, (4, 8))
    >>> attn.a_bits = 8
    >>> attn(torch.randn(2, 5, 192)).shape
    torch.Size([2, 5, 192])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..compression.quant import grid, qparams, scale_floor
from ..measure.bitops import attention_macs  # noqa: F401 (moved to craftlab.measure; re-exported)
from .layers import _LSQ

OPERANDS = ("q", "k", "v", "p")
"""Quantized operands: query, key, value (signed grids) and the softmax probabilities (unsigned grid)."""


class QuantAttention(nn.Module):
    """timm ``Attention`` whose two matmuls take fake-quantized operands at ``a_bits`` (None: float, timm's
    unfused path). Created by :func:`quantize_attention`; attributes of the original module are kept."""

    a_bits: int | None
    attn_candidates: tuple[int, ...]
    attn_log_step: nn.ParameterDict
    collect: dict[str, list[torch.Tensor]] | None

    def _step(self, operand: str, bits: int, dtype: torch.dtype) -> torch.Tensor:
        log = (getattr(self, f"log_step_{operand}") if "attn_log_step" not in self._modules
               else self.attn_log_step[f"{operand}{bits}"])
        return log.exp().to(dtype).clamp_min(scale_floor(dtype))

    @torch.no_grad()
    def freeze(self) -> None:
        """Keep only the current bits' steps, as buffers (an exported subnet: no quantizer parameters)."""
        if "attn_log_step" not in self._modules:
            return
        if self.a_bits is not None:
            for op in OPERANDS:
                self.register_buffer(f"log_step_{op}", self.attn_log_step[f"{op}{self.a_bits}"].detach().clone())
        del self.attn_log_step

    def _quant(self, t: torch.Tensor, operand: str) -> torch.Tensor:
        if self.collect is not None and operand != "p":
            self.collect[operand].append(t.detach().flatten())
        if self.a_bits is None:
            return t
        qmin, qmax = grid(self.a_bits, symmetric=operand != "p")
        per_example = t[0].numel()
        return _LSQ.apply(t, self._step(operand, self.a_bits, t.dtype), qmin, qmax,
                          1.0 / math.sqrt(max(per_example, 1) * qmax))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                **kwargs: Any) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("QuantAttention supports unmasked self-attention only")
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = self._quant(q * self.scale, "q")
        attn = q @ self._quant(k, "k").transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self._quant(attn, "p") @ self._quant(v, "v")
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        if gate is not None:
            x = x * gate
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)

    @torch.no_grad()
    def init_steps(self, method: str = "mse") -> None:
        """q/k/v steps from the collected inputs (MSE range search), probability step ``1/(2^b - 1)``."""
        samples = self.collect or {}
        for b in self.attn_candidates:
            for op in ("q", "k", "v"):
                if samples.get(op):
                    flat = torch.cat(samples[op])
                    flat = flat[:: max(1, flat.numel() // 2**18)]
                    scale, _ = qparams(flat.float(), b, axis=None, symmetric=True, method=method)
                    self.attn_log_step[f"{op}{b}"].copy_(scale.clamp_min(1e-12).log().reshape(()))
            self.attn_log_step[f"p{b}"].fill_(-math.log(2**b - 1))

    def extra_repr(self) -> str:
        return f"a_bits={self.a_bits} (q·kᵀ and attn·v), candidates={self.attn_candidates}"


_TIMM_CLASS: type | None = None


def quantize_attention(attn: nn.Module, a_candidates: tuple[int, ...]) -> QuantAttention:
    """Turn a timm ``Attention`` into a :class:`QuantAttention` in place (returned): one LSQ log-step per operand
    and candidate bit-width (zeros: step 1 until :meth:`QuantAttention.init_steps` or a checkpoint sets them)."""
    from timm.models.vision_transformer import Attention

    if not isinstance(attn, Attention):
        raise TypeError(f"quantized attention needs timm's Attention, got {type(attn).__name__}")
    global _TIMM_CLASS
    if _TIMM_CLASS is None:
        _TIMM_CLASS = type("QuantTimmAttention", (QuantAttention, Attention), {"__module__": __name__})
    attn.__class__ = _TIMM_CLASS
    dev = attn.qkv.weight.device
    attn.attn_candidates = tuple(a_candidates)
    attn.attn_log_step = nn.ParameterDict({f"{op}{b}": nn.Parameter(torch.zeros((), device=dev))
                                           for b in attn.attn_candidates for op in OPERANDS})
    attn.a_bits = max(attn.attn_candidates)
    attn.collect = None
    return attn
