"""The linear probe: one linear layer on the frozen backbone's pre-logits feature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...registry import ADAPT_METHODS
from ._base import SideMethod, View, dim

if TYPE_CHECKING:
    import torch
    from torch import nn


@ADAPT_METHODS.register("linear")
@dataclass(frozen=True)
class Linear(SideMethod):
    """A linear probe on the pooled feature z_L (features tapped once per split in its arm)."""

    default_lr = 1e-1
    order = 10
    arms = ({"cache": "memory"},)

    def label(self, depth: int = 4) -> str:
        return "linear probe"

    def spec(self, model: nn.Module) -> tuple[tuple[int, ...], Any]:
        from ..taps import depth

        return (depth(model),), View("linear")

    def build(self, model: nn.Module, taps: tuple[int, ...], num_classes: int) -> nn.Module:
        from ..side import LinearProbe

        return LinearProbe(dim(model), num_classes)

    def sent_per_image(self, model: nn.Module, image: torch.Tensor) -> int:
        from ..miet import transfers

        return {t.method: t.per_image_bytes for t in transfers(model, image, 1, 1, bits=())}["linear probe"]
