"""SAM on a random fraction of the steps (ESAM-style step selection; Du et al. 2022 select data, this selects
steps): the two-pass step with probability `fraction`, a plain base step otherwise, drawn from the optimizer's
private generator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import SAM_MODES_REGISTRY, Mode

if TYPE_CHECKING:
    from ..sam import SAM


@SAM_MODES_REGISTRY.register("random")
@dataclass
class RandomSam(Mode):
    """`fraction`: the share of two-pass steps, in (0, 1]."""

    fraction: float = 0.5
    option = "fraction"
    default = 0.5

    @classmethod
    def check(cls, value: float) -> float:
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError("the fraction of SAM steps must be in (0, 1]")
        return float(value)

    def plan(self, opt: SAM) -> bool:
        import torch

        return float(torch.rand((), generator=opt._generator)) < self.fraction

    def options(self) -> dict[str, Any]:
        return {"fraction": self.fraction}
