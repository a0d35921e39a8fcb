"""Low-bit post-training quantization of timm Vision Transformers (RepQ-ViT style).

:func:`craftlab.quantize` fake-quantizes only the inputs and weights of Conv2d/Linear layers: in a ViT the
two attention matmuls and the post-softmax probabilities stay float, so its "W4A4" is much milder than
the W4A4 of the ViT PTQ papers. :func:`quantize_vit` quantizes what those papers quantize:

==============================================  ============================  =====================
tensor                                          quantizer                     granularity
==============================================  ============================  =====================
weights of every Linear (qkv, proj, fc1, fc2,   uniform asymmetric, w_bits    per output channel
head) and of the patch-embedding conv
inputs of qkv and fc1 (post-LayerNorm)          uniform, a_bits               per channel at
                                                                              calibration, folded
                                                                              to per tensor
inputs of proj, fc2, head                       uniform, a_bits               per tensor
q and k (inputs of q·kᵀ), v                     uniform, a_bits               per tensor
attention probabilities (input of attn·v)       log√2 (default), log2,        per tensor
                                                uniform or twin-uniform
patch-embedding input (the image)               uniform, max(a_bits, 8)       per tensor
==============================================  ============================  =====================

Not quantized (as in RepQ-ViT): LayerNorm, softmax, GELU, residual adds, position embeddings, the scores
before softmax.

Where each piece comes from:

* **RepQ-ViT** (Li et al., ICCV 2023), following its official classification code: the log√2 quantizer
  for post-softmax values (levels ``Δ·2^(-q/2)``, q = 0 .. 2^b - 1, values below the last level become an
  exact 0, so the quantizer has 2^b levels plus a zero, as in that code); Δ chosen among the 0.999 /
  0.9999 / 0.99999 quantiles by squared error; the uniform quantizer with the same percentile search
  elsewhere (weights per output channel, activations per tensor); and the **scale re-parameterization of
  post-LayerNorm activations** (:func:`reparam_layernorm`): calibrate the input of qkv / fc1 per channel
  (``s_c``, ``z_c``), take ``s̃ = mean(s)``, ``z̃ = round(mean(z))``, ``r = s / s̃``, ``δ = -s̃·(z - z̃)``;
  LayerNorm ``γ ← γ / r``, ``β ← β / r - δ``; next Linear ``W ← W·diag(r)``, ``b ← b + W_new·δ``. The
  per-tensor quantizer ``(s̃, z̃)`` then gives the next Linear exactly the per-channel quantized input.
  Weights are quantized after this folding. Applies to ``norm1 → attn.qkv`` and ``norm2 → mlp.fc1`` of
  every pre-norm :class:`timm.models.vision_transformer.Block`; the final norm → head is not folded.
* **PTQ4ViT** (Yuan et al., ECCV 2022): ``softmax_quantizer="twin-uniform"``, its post-softmax twin-uniform
  quantizer (piecewise rule: fine range below ``split = 2^-m``, coarse range of step ``1/(2^(b-1)-1)``).

Reconstructions and deviations (not the papers' exact procedure):

* Calibration is one pass of the float model over every calibration batch ("parallel": each quantizer
  sees float inputs), keeping exact running min / max and a bounded random sample of each tensor for the
  percentile search. RepQ-ViT calibrates on one batch of 32 images with the quantizers already on.
* ``z̃`` is rounded to an integer (RepQ-ViT's code keeps the mean of the zero points unrounded): with an
  integer ``z̃`` the folded per-tensor codes equal the per-channel codes exactly. Per-channel scales are
  floored at 1e-4 of the largest before folding, so a channel with an almost empty range does not blow
  up ``γ / r``.
* The twin-uniform split is chosen by squared error over ``2^-m``, m = 0..19; PTQ4ViT uses its
  Hessian-guided metric.
* ``softmax_quantizer="log2"`` uses levels ``Δ·2^-q`` with the same Δ search (a plain base-2 variant).

A property to know: a log quantizer's levels near Δ are √2 (log√2) or 2 (log2) apart at *every* bit width;
more bits only extend the grid towards 0. So at 8 bits the large attention probabilities are quantized
more coarsely than by the uniform grid (on the zoo vit-tiny, W8A8 test loss 0.265 with log√2 vs 0.258
with ``softmax_quantizer="uniform"``); RepQ-ViT reports W4A4 and W6A6.

Not implemented: PTQ4ViT's Hessian-guided scale search and its twin-uniform quantizer for post-GELU
activations (fc2 inputs use the per-tensor uniform quantizer); RepQ-ViT's integer-only log2 form of the
log√2 quantizer (here fake quantization); Swin's patch-merging reparameterization; attention pooling
(``global_pool="map"``), hybrid CNN-stem ViTs and other attention types (EVA, RoPE, differential).

Example::

    q = quantize_vit(model, w_bits=4, a_bits=4, calib=data.calib)      # RepQ-ViT W4A4
    craftlab.evaluate(q, data.test)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer
from torch import nn

from .._errors import unknown_name
from ..settings import GRANULARITIES, parse_bits, range_methods
from ._calib import run_calibration
from ._quantizers import (
    ACT_METHODS,
    SOFTMAX_QUANTIZERS,
    ActQuantizer,
    Observer,
    search_uniform_range,
    uniform_qparams,
    uniform_quant,
)
from .quant import QuantConv2d, QuantLinear, quantize_tensor

try:
    from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
except ImportError:  # timm releases whose Attention takes no mask
    def resolve_self_attn_mask(seq_len, attn, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise ValueError("this timm version has no attention masks")
        return None

    def maybe_add_mask(scores, attn_mask=None):
        return scores

__all__ = ["QuantAttention", "explicit_attention", "quantize_vit", "quantize_weight", "quantization_disabled",
           "reparam_layernorm", "SOFTMAX_QUANTIZERS", "W_METHODS"]

W_METHODS = range_methods("repq")  # the recipe's range methods (compression/recipes/repq.py says them)
STEM_MIN_BITS = 8  # RepQ-ViT keeps the image (patch-embedding input) at 8 bits


class _MatMul(nn.Module):
    """``a @ b`` as a module, so hooks see the (quantized) inputs of the attention matmuls."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class QuantAttention(Attention):
    """timm ``Attention`` with an explicit (never fused) path and quantizers on the inputs of both matmuls.

    Mirrors timm's unfused branch line by line (gate, q/k norm, ``q * scale``, mask, softmax, attention
    dropout, output norm, proj); ``q_quant`` / ``k_quant`` quantize the inputs of ``matmul_qk``
    (``q·scale`` and ``k``), ``attn_quant`` / ``v_quant`` those of ``matmul_av``. With every quantizer off
    it computes what timm's module computes.
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate_mod = getattr(self, "gate", None)
        gate = gate_mod(x).sigmoid() if gate_mod is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = self.matmul_qk(self.q_quant(q), self.k_quant(k).transpose(-2, -1))
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = self.matmul_av(self.attn_quant(attn), self.v_quant(v))
        x = x.transpose(1, 2).reshape(B, N, getattr(self, "attn_dim", self.num_heads * self.head_dim))
        norm = getattr(self, "norm", None)
        x = norm(x) if norm is not None else x
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        x = self.proj_drop(x)
        return x

    def act_quantizers(self) -> dict[str, ActQuantizer]:
        """The four matmul-input quantizers by name."""
        return {"q": self.q_quant, "k": self.k_quant, "v": self.v_quant, "attn": self.attn_quant}


def _make_quant_attention(attn: Attention, a_bits: int | None, softmax_quantizer: str) -> QuantAttention:
    """Turn `attn` (in place) into a :class:`QuantAttention` with uncalibrated quantizers."""
    attn.__class__ = QuantAttention
    attn.matmul_qk, attn.matmul_av = _MatMul(), _MatMul()
    attn.q_quant, attn.k_quant = ActQuantizer("uniform", a_bits), ActQuantizer("uniform", a_bits)
    attn.attn_quant, attn.v_quant = ActQuantizer(softmax_quantizer, a_bits), ActQuantizer("uniform", a_bits)
    for aq in attn.act_quantizers().values():
        aq.to(attn.qkv.weight.device)
    return attn  # type: ignore[return-value]


def explicit_attention(attn: Attention) -> QuantAttention:
    """A copy of a timm ``Attention`` running the explicit path with every quantizer off (float).

    Example::

        ref = timm.layers.Attention(64, num_heads=4).eval()
        torch.testing.assert_close(explicit_attention(ref)(x), ref(x))
    """
    if type(attn) is not Attention:
        raise ValueError(f"explicit_attention needs timm's Attention, got {type(attn).__name__}")
    return _make_quant_attention(copy.deepcopy(attn), None, "uniform")


@torch.no_grad()
def reparam_layernorm(norm: nn.LayerNorm, consumers: list[nn.Linear], scale: torch.Tensor,
                      zero_point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RepQ-ViT's scale re-parameterization: fold per-channel input grids into one per-tensor grid.

    `scale` / `zero_point` (shape (C,)) are the per-channel grid of the LayerNorm output that feeds
    `consumers`. Rescales the LayerNorm affine and the consumers' weights and biases in place (the float
    function is unchanged) and returns the per-tensor ``(s̃, z̃)`` that quantizes the new LayerNorm output
    into the same integer codes as the per-channel grid did.

    Example::

        s, z = reparam_layernorm(block.norm1, [block.attn.qkv], s_c, z_c)
    """
    s_t, z_t = scale.mean(), torch.round(zero_point.mean())
    r = scale / s_t
    delta = -s_t * (zero_point - z_t)
    c = r.numel()
    if norm.weight is None:
        norm.weight = nn.Parameter(torch.ones(c, device=r.device, dtype=r.dtype))
    if norm.bias is None:
        norm.bias = nn.Parameter(torch.zeros(c, device=r.device, dtype=r.dtype))
    norm.elementwise_affine = True
    norm.weight.copy_(norm.weight / r)
    norm.bias.copy_(norm.bias / r - delta)
    for lin in consumers:
        lin.weight.copy_(lin.weight * r)  # column c times r_c
        extra = lin.weight @ delta.to(lin.weight)  # uses the rescaled weight
        if lin.bias is None:
            lin.bias = nn.Parameter(extra)
        else:
            lin.bias.add_(extra)
    return s_t, z_t


@torch.no_grad()
def quantize_weight(w: torch.Tensor, bits: int, granularity: str = "channel", method: str = "repq") -> torch.Tensor:
    """Fake-quantized copy of a weight (rows = output channels).

    ``repq``: asymmetric uniform grid, clipped at the percentile pair with the smallest squared error (per
    output channel, or per tensor); ``minmax``: :func:`~craftlab.compression.quant.quantize_tensor`'s
    symmetric min-max grid (what :func:`craftlab.quantize` does).

    Example::

        w4 = quantize_weight(layer.weight, 4)
    """
    axis = 0 if granularity == "channel" else None
    if method == "minmax":
        return quantize_tensor(w, bits, axis=axis, symmetric=True)
    cols = w.detach().reshape(w.shape[0], -1).t() if axis == 0 else w.detach().reshape(-1, 1)
    lo, hi = search_uniform_range(cols, bits, "repq")
    scale, zp = uniform_qparams(lo, hi, bits)
    out = uniform_quant(cols.float(), scale, zp, bits)
    return (out.t() if axis == 0 else out).reshape(w.shape).to(w.dtype)


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``with quantization_disabled(q): ...`` runs `q` with float activations (weights stay as stored).

    Example::

        with quantization_disabled(q):
            logits = q(x)      # LN-reparameterized, weights as quantized, activations float
    """
    saved: list[tuple[nn.Module, str, Any]] = []
    for m in model.modules():
        if isinstance(m, ActQuantizer):
            saved.append((m, "enabled", m.enabled))
            m.enabled = False
        elif isinstance(m, (QuantLinear, QuantConv2d)):
            saved.append((m, "a_bits", m.a_bits))
            m.a_bits = None
    try:
        yield model
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def _check_vit(model: nn.Module) -> None:
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"quantize_vit needs a timm VisionTransformer (ViT / DeiT), got {type(model).__name__}; "
                         "for CNNs and other architectures use craftlab.quantize")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("quantize_vit does not support attention pooling (global_pool='map')")
    if not isinstance(model.patch_embed, PatchEmbed):
        raise ValueError(f"quantize_vit needs timm's PatchEmbed stem, got {type(model.patch_embed).__name__} "
                         "(hybrid CNN-stem ViTs are not supported)")
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, ResPostBlock):
            raise ValueError(f"quantize_vit supports timm Block / ResPostBlock, blocks.{i} is {type(blk).__name__}")
        if isinstance(blk.attn, QuantAttention):
            raise ValueError("this model is already quantized by quantize_vit")
        if type(blk.attn) is not Attention:
            raise ValueError(f"quantize_vit supports timm's Attention, blocks.{i}.attn is {type(blk.attn).__name__}")


def _ln_pairs(model: VisionTransformer) -> list[tuple[nn.LayerNorm, list[nn.Linear]]]:
    """(LayerNorm, the Linear layers that read its output) of every pre-norm block."""
    pairs = []
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block:
            continue  # post-norm blocks: the LayerNorm output goes to the residual stream
        mlp_in = [m for n in ("fc1", "fc1_g", "fc1_x") if isinstance(m := getattr(blk.mlp, n, None), nn.Linear)]
        if not mlp_in:
            raise ValueError(f"ln_reparam: blocks.{i}.mlp ({type(blk.mlp).__name__}) has no fc1 Linear to fold into; "
                             "pass ln_reparam=False")
        attn_in = [blk.attn.qkv] + ([blk.attn.gate] if getattr(blk.attn, "gate", None) is not None else [])
        for norm, consumers in ((blk.norm1, attn_in), (blk.norm2, mlp_in)):
            if not isinstance(norm, nn.LayerNorm):
                raise ValueError(f"ln_reparam needs nn.LayerNorm before qkv / fc1, blocks.{i} has "
                                 f"{type(norm).__name__}; pass ln_reparam=False")
            pairs.append((norm, consumers))
    return pairs


def quantize_vit(
    model: nn.Module,
    w_bits: int | None,
    a_bits: int | None,
    calib: Iterable[Any] | None = None,
    *,
    softmax_quantizer: str = "log2sqrt2",
    ln_reparam: bool = True,
    w_granularity: str = "channel",
    w_method: str = "repq",
    a_method: str = "repq",
    quantize_stem_head: bool = True,
    calib_samples: int | None = None,
) -> nn.Module:
    """Return a low-bit post-training-quantized copy of a timm ViT (RepQ-ViT; see the module docstring).

    Args:
        w_bits: weight bits of every Linear and the patch-embedding conv (2-8, 16; None keeps float weights).
        a_bits: bits of every Linear input, of q, k, v and of the attention probabilities (None = float).
        calib: calibration batches (DataLoader or iterable of (x, y) / tensors); needed when a_bits is set.
        softmax_quantizer: ``log2sqrt2`` (RepQ-ViT), ``log2``, ``uniform`` or ``twin-uniform`` (PTQ4ViT).
        ln_reparam: fold per-channel post-LayerNorm grids into per-tensor ones (False: plain per-tensor).
        w_granularity: ``channel`` (per output channel) or ``tensor``.
        w_method / a_method: ``repq`` (percentile search by squared error) or ``minmax``.
        quantize_stem_head: False keeps the patch embedding and the head float (craftlab.quantize's default).
        calib_samples: stop calibrating after this many images.

    Example::

        q = quantize_vit(model, 4, 4, data.calib)                    # W4A4, log√2 softmax, LN folded
        q6 = quantize_vit(model, 6, 6, data.calib, softmax_quantizer="uniform", ln_reparam=False)
    """
    w_bits, a_bits = parse_bits(w_bits, "w_bits"), parse_bits(a_bits, "a_bits")
    for what, value, allowed in (("softmax quantizer", softmax_quantizer, SOFTMAX_QUANTIZERS),
                                 ("w_granularity", w_granularity, GRANULARITIES),
                                 ("w_method", w_method, W_METHODS), ("a_method", a_method, ACT_METHODS)):
        if value not in allowed:
            raise unknown_name(what, value, allowed)
    _check_vit(model)
    if a_bits is not None and calib is None:
        raise ValueError("a_bits needs calibration data to set activation ranges: pass calib=<DataLoader or batches>")
    qmodel = copy.deepcopy(model)
    attns = [_make_quant_attention(blk.attn, a_bits, softmax_quantizer) for blk in qmodel.blocks]
    stem, head = qmodel.patch_embed.proj, qmodel.get_classifier()
    layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              and (quantize_stem_head or (m is not stem and m is not head))}
    pairs = _ln_pairs(qmodel) if ln_reparam and a_bits is not None else []
    in_bits = {m: (max(a_bits, STEM_MIN_BITS) if m is stem else a_bits) if a_bits is not None else None
               for m in layers.values()}
    n_images = 0
    grids: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    if a_bits is not None:
        n_images, grids = _calibrate(qmodel, in_bits, attns, pairs, calib, a_method, calib_samples)
    for mod in layers.values():
        mod.__class__ = QuantConv2d if isinstance(mod, nn.Conv2d) else QuantLinear
        mod._init_quant(w_bits, in_bits[mod], False)
        if mod in grids:
            mod.a_scale, mod.a_zero_point = grids[mod]
        mod.a_scale, mod.a_zero_point = mod.a_scale.to(mod.weight), mod.a_zero_point.to(mod.weight)
        if w_bits is not None:  # after the LayerNorm folding: the folded weights are the ones quantized
            with torch.no_grad():
                mod.weight.copy_(quantize_weight(mod.weight, w_bits, w_granularity, w_method))
    info = {"recipe": "repq", "w_bits": w_bits, "a_bits": a_bits, "w_granularity": w_granularity,
            "a_granularity": "tensor", "method": w_method, "a_method": a_method,
            "softmax_quantizer": softmax_quantizer, "ln_reparam": bool(pairs), "calib_images": n_images,
            "layers": list(layers), "attention": [f"blocks.{i}.attn" for i in range(len(attns))]}
    qmodel.craftlab_compression = {**getattr(model, "craftlab_compression", {}), "quant": info}
    return qmodel


@torch.no_grad()
def _calibrate(model, in_bits, attns, pairs, calib, method, calib_samples):
    """One pass over `calib`; calibrate the attention quantizers, fold the LayerNorms; return the input grids
    (module -> (scale, zero point)) of the layers in `in_bits` (module -> input bits)."""
    folded = {lin for _, consumers in pairs for lin in consumers}
    observers: dict[nn.Module, Observer] = {}
    for mod in in_bits:
        per_channel = mod in folded and isinstance(mod, nn.Linear)
        observers[mod] = Observer(channels=mod.in_features if per_channel else None)
    hooks = [m.register_forward_pre_hook(lambda m, inputs: observers[m].update(inputs[0])) for m in observers]
    quantizers = [aq for attn in attns for aq in attn.act_quantizers().values()]
    for aq in quantizers:
        aq.observer = Observer()
    try:
        seen = run_calibration(model, calib, hooks, calib_samples, purpose="quantize_vit")
    except ValueError:
        for aq in quantizers:
            aq.observer = None
        raise
    for aq in quantizers:
        aq.calibrate(method)
    grids = {}
    for norm, consumers in pairs:  # per-channel grid of the LayerNorm output, folded into one per-tensor grid
        obs, bits = observers[consumers[0]], in_bits[consumers[0]]
        lo, hi = search_uniform_range(obs.sample(), bits, method, obs.range())
        scale, _ = uniform_qparams(lo, hi, bits)
        scale = scale.clamp_min(1e-4 * scale.max())
        s_t, z_t = reparam_layernorm(norm, consumers, scale, torch.round(-lo / scale))
        grids.update({lin: (s_t, z_t) for lin in consumers})
    for mod, obs in observers.items():
        if mod not in grids:
            lo, hi = obs.range()
            lo, hi = search_uniform_range(obs.sample().reshape(-1), in_bits[mod], method, (lo.min(), hi.max()))
            grids[mod] = uniform_qparams(lo, hi, in_bits[mod])
    return seen, {m: (s.reshape(()), z.reshape(())) for m, (s, z) in grids.items()}
