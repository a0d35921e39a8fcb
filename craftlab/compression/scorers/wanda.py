"""Wanda (Sun et al., 2023, arXiv 2306.11695): |W_ij| · ‖X_j‖₂, compared within each output row by default.

‖X_j‖₂ is the L2 norm of input feature j over the calibration inputs (``prune.input_norms``); for a convolution
it is per input channel, applied to every kernel position of that channel (grouped convolutions: per group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import PRUNE_SCORERS, Scorer

if TYPE_CHECKING:  # the module is light: torch is imported where the score is computed
    import torch
    from torch import nn


@PRUNE_SCORERS.register("wanda")
@dataclass(frozen=True)
class Wanda(Scorer):
    """|W| times the norm of the input feature each weight reads."""

    default_scope = "row"
    needs_calib = True

    def score(self, layer: nn.Module, weight: torch.Tensor, input_norm: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        if input_norm is None:
            raise ValueError("Wanda needs the layer's input norms (calibration images)")
        norm = input_norm.to(weight.device)
        from torch import nn

        if isinstance(layer, nn.Conv2d):
            groups = layer.groups
            per_group = norm.view(groups, -1)  # (G, C_in/G)
            rows = per_group.repeat_interleave(weight.shape[0] // groups, dim=0)  # (O, C_in/G)
            return weight.abs() * rows[:, :, None, None]
        return weight.abs() * norm[None, :]
