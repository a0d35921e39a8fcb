"""LoRA (Hu et al. 2021) inside the backbone, through Hugging Face ``peft``: adapters on the attention's fused
q/k/v projections and a trainable head; back-propagation runs through the backbone
(:func:`craftlab.adapt.baselines.lora_model`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...registry import ADAPT_METHODS
from ._base import FinetuneMethod

if TYPE_CHECKING:
    from torch import nn

    from ...data import DataBundle


@ADAPT_METHODS.register("lora")
@dataclass(frozen=True)
class LoRA(FinetuneMethod):
    """`lora_rank`: the adapters' rank (alpha = rank)."""

    default_lr = 3e-2
    order = 20
    lora_rank: int = 4

    def label(self, depth: int = 4) -> str:
        return f"LoRA (r={self.lora_rank}, qkv)"

    def prepare(self, model: nn.Module, seed: int = 0) -> nn.Module:
        from ..baselines import lora_model

        return lora_model(model, rank=self.lora_rank, seed=seed)

    def finetune(self, model: nn.Module, data: DataBundle, **kwargs: Any) -> Any:
        from ..baselines import finetune_lora

        return finetune_lora(model, data, rank=self.lora_rank, **kwargs)

    def record(self) -> dict[str, Any]:
        return {"lora_rank": self.lora_rank}
