"""Full fine-tuning of every parameter (:func:`craftlab.finetune`); ``sam_rho > 0`` adds SAM (CrAFT's recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...registry import ADAPT_METHODS
from ._base import FinetuneMethod

if TYPE_CHECKING:
    from torch import nn

    from ...data import DataBundle


@ADAPT_METHODS.register("full")
@dataclass(frozen=True)
class Full(FinetuneMethod):
    """`sam_rho`: SAM's ρ (0: plain AdamW)."""

    default_lr = 1e-3
    order = 30
    arms = ({}, {"sam_rho": 0.05})
    sam_rho: float = 0.0

    def label(self, depth: int = 4) -> str:
        return "full" if not self.sam_rho else "full + SAM"

    def finetune(self, model: nn.Module, data: DataBundle, **kwargs: Any) -> Any:
        from ..baselines import finetune_full

        return finetune_full(model, data, sam_rho=self.sam_rho, **kwargs)

    def record(self) -> dict[str, Any]:
        return {"sam_rho": self.sam_rho}
