"""Magnitude pruning: |W| (Han et al., 2015), counted over all targeted layers at once by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import PRUNE_SCORERS, Scorer

if TYPE_CHECKING:  # the module is light: torch is imported where the score is computed
    import torch
    from torch import nn


@PRUNE_SCORERS.register("magnitude")
@dataclass(frozen=True)
class Magnitude(Scorer):
    """|W|."""

    default_scope = "global"

    def score(self, layer: nn.Module, weight: torch.Tensor, input_norm: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        return weight.abs()
