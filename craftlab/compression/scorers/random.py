"""Random pruning: the control that keeps nothing in particular (scores drawn from the caller's seed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import PRUNE_SCORERS, Scorer

if TYPE_CHECKING:  # the module is light: torch is imported where the score is computed
    import torch
    from torch import nn


@PRUNE_SCORERS.register("random")
@dataclass(frozen=True)
class Random(Scorer):
    """U(0, 1) per weight, from `generator` (``prune(seed=...)``)."""

    default_scope = "global"

    def score(self, layer: nn.Module, weight: torch.Tensor, input_norm: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        return torch.rand(weight.shape, generator=generator).to(weight.device)
