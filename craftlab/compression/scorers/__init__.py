"""Pruning scores, one module per method: the lowest-scored weights are zeroed (``craftlab.prune(method=...)``).

A score is a :class:`Scorer` registered in :data:`PRUNE_SCORERS`; its module is named after it
(``wanda.py`` is ``"wanda"``). Add a method by adding a module here (or by registering a Scorer from your own
code); the command line, the app and the sweeps list it from the registry. Example::

    from craftlab.compression.scorers import PRUNE_SCORERS, Scorer

    @PRUNE_SCORERS.register("taylor")
    class Taylor(Scorer):
        '''|W * dL/dW| needs gradients: shown only as the shape of a scorer.'''
        default_scope = "layer"
        def score(self, layer, weight, input_norm=None, generator=None):
            return (weight * weight.grad).abs()

    craftlab.prune(model, 0.5, method="taylor")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...registry import PRUNE_SCORERS

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["PRUNE_SCORERS", "Scorer"]


@dataclass(frozen=True)
class Scorer:
    """A pruning score (its fields, if any, are its configuration).

    `default_scope`: where sparsity is counted when the caller names none (``global``, ``layer`` or ``row``);
    `needs_calib`: it reads the calibration inputs (then ``score`` gets each input feature's L2 norm).
    """

    default_scope: ClassVar[str] = "global"
    needs_calib: ClassVar[bool] = False

    def score(self, layer: nn.Module, weight: torch.Tensor, input_norm: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance of each entry of `weight` (same shape; higher is kept)."""
        raise NotImplementedError
