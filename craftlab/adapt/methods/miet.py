"""MIET edge tuning (Tang et al., CVPR 2025, arXiv 2406.17559): the device trains a low-rank attention adaptor on
Gather*(k) = z_0 + … + z_k, received from the server (optionally quantized to `bits`; :mod:`craftlab.adapt.miet`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...registry import ADAPT_METHODS
from ._base import DEFAULT_RANK, SideMethod, View, dim, pool

if TYPE_CHECKING:
    import torch
    from torch import nn


@ADAPT_METHODS.register("miet")
@dataclass(frozen=True)
class MIET(SideMethod):
    """`k`: Gather*(k) (default L, every block); `bits`: the transfer (None = float32, 8, 4, 2); `rank`,
    `heads`: the adaptor's LSA module."""

    default_lr = 3e-2
    order = 50
    arms = ({"cache": "memory"}, {"cache": "memory", "bits": 8}, {"cache": "memory", "bits": 4})
    k: int | None = None
    bits: int | None = None
    rank: int = DEFAULT_RANK
    heads: int = 1

    def label(self, depth: int = 4) -> str:
        return f"MIET (k={depth if self.k is None else self.k}{'' if self.bits is None else f', {self.bits}-bit'})"

    def spec(self, model: nn.Module) -> tuple[tuple[int, ...], Any]:
        from .. import miet
        from ..side import check_rank
        from ..taps import depth

        check_rank(self.rank, dim(model), self.heads)
        L = depth(model)
        k = miet.check_k(L if self.k is None else self.k, L)
        return tuple(range(k + 1)), View("miet", k=k, bits=miet.check_bits(self.bits))

    def build(self, model: nn.Module, taps: tuple[int, ...], num_classes: int) -> nn.Module:
        from ..side import GatherAdaptor

        return GatherAdaptor(dim(model), num_classes, rank=self.rank, heads=self.heads, pool=pool(model))

    def record(self) -> dict[str, Any]:
        return {"rank": self.rank, "heads": self.heads}

    def sent_per_image(self, model: nn.Module, image: torch.Tensor) -> int:
        from ..miet import transfers
        from ..taps import depth

        k = depth(model) if self.k is None else self.k
        sent = {t.method: t.per_image_bytes for t in transfers(model, image, k, 1, bits=(self.bits,))}
        return sent["MIET" if self.bits is None else f"MIET {self.bits}-bit"]
