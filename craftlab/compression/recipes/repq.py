"""``repq``: RepQ-ViT-style post-training quantization of a timm ViT
(:func:`craftlab.compression.vit_quant.quantize_vit`): the inputs of both attention matmuls too, a log√2
post-softmax quantizer, LayerNorm re-parameterization; activations per tensor.

>>> from craftlab.registry import QUANT_RECIPES
>>> QUANT_RECIPES.get("repq").range_methods
('repq', 'minmax')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import QUANT_RECIPES, QuantRecipe

if TYPE_CHECKING:
    from torch import nn


@QUANT_RECIPES.register("repq")
@dataclass(frozen=True)
class RepQ(QuantRecipe):
    """`softmax_quantizer` (``log2sqrt2``, ``log2``, ``uniform``, ``twin-uniform``), `ln_reparam` (fold per-channel
    post-LayerNorm grids), `quantize_stem_head` (False keeps the patch embedding and the head float)."""

    label = "RepQ-ViT"
    blurb = "timm ViTs only; also the attention matmuls, log-sqrt2 softmax, LayerNorm folding"
    aliases = ("repq-vit", "repqvit")
    range_methods = ("repq", "minmax")
    a_granularities = ("tensor",)
    a_granularity_reason = "post-LayerNorm per-channel ranges are folded into the LayerNorm"
    takes_targets = False
    weight_path_problem = ("RepQ-ViT re-parameterizes each LayerNorm and the Linear after it, so the straight line "
                           "from w to C(w) passes through models that compute other functions")

    softmax_quantizer: str = "log2sqrt2"
    ln_reparam: bool = True
    quantize_stem_head: bool = True

    def backend_kwargs(self, w_granularity: str, a_granularity: str, method: str | None, a_method: str | None,
                       targets: Any) -> dict[str, Any]:
        method = method or self.range_methods[0]
        self.check_method("method", method)
        self.check_method("a_method", a_method or method)
        self.check_a_granularity(a_granularity)
        if targets is not None:
            raise ValueError("recipe 'repq' quantizes every Linear and the patch embedding of a ViT: targets= is for "
                             "recipe 'uniform' (quantize_stem_head=False keeps the stem and the head float)")
        return {"w_granularity": w_granularity, "w_method": method, "a_method": a_method or method, **self.config()}

    def check_model(self, model: nn.Module) -> None:
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise ValueError(f"recipe 'repq' (RepQ-ViT) quantizes timm Vision Transformers (ViT / DeiT) only, got "
                             f"{type(model).__name__}: use recipe 'uniform' for CNNs and other models")

    def quantize(self, model: nn.Module, w_bits: int | None, a_bits: int | None, calib: Any,
                 **kwargs: Any) -> nn.Module:
        from ..vit_quant import quantize_vit

        return quantize_vit(model, w_bits, a_bits, calib, **kwargs)
