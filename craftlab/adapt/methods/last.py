"""LAST side-tuning (Tang et al. 2024, arXiv 2402.04009): a side network of low-rank self-attention blocks reads
z_0, z_g, …, z_L of the frozen backbone, which runs without autograd (the network: :mod:`craftlab.adapt.side`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...registry import ADAPT_METHODS
from ._base import DEFAULT_RANK, SideMethod, View, dim, pool

if TYPE_CHECKING:
    import torch
    from torch import nn


@ADAPT_METHODS.register("last")
@dataclass(frozen=True)
class LAST(SideMethod):
    """`gap`: one side block every g of the L blocks (g divides L, m = L/g blocks); `rank`, `heads`: the LSA
    modules (1 ≤ r < d)."""

    default_lr = 1e-2
    order = 40
    arms = ({"gap": 1}, {"gap": 2})
    gap: int = 1
    rank: int = DEFAULT_RANK
    heads: int = 1

    def label(self, depth: int = 4) -> str:
        return f"LAST (g={self.gap}, m={depth // self.gap})"

    def spec(self, model: nn.Module) -> tuple[tuple[int, ...], Any]:
        from ..side import check_rank
        from ..taps import last_taps

        check_rank(self.rank, dim(model), self.heads)
        return last_taps(model, self.gap), View("last")

    def build(self, model: nn.Module, taps: tuple[int, ...], num_classes: int) -> nn.Module:
        from torch import nn

        from ..side import LASTSideNet

        norm = model.norm.state_dict() if isinstance(getattr(model, "norm", None), nn.LayerNorm) else None
        return LASTSideNet(dim(model), num_classes, m=len(taps) - 1, rank=self.rank, heads=self.heads,
                           pool=pool(model), norm=norm)

    def record(self) -> dict[str, Any]:
        return {"rank": self.rank, "heads": self.heads, "gap": self.gap}

    def sent_per_image(self, model: nn.Module, image: torch.Tensor) -> int:
        from ..miet import transfers

        return {t.method: t.per_image_bytes for t in transfers(model, image, 1, self.gap, bits=())}["LAST"]
