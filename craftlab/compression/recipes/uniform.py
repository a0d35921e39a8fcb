"""``uniform``: fake quantization of the weights and inputs of Conv2d / Linear layers
(:func:`craftlab.compression.quant.quantize`), the default recipe; for any model.

>>> from craftlab.registry import QUANT_RECIPES
>>> QUANT_RECIPES.get("uniform").range_methods
('minmax', 'percentile', 'mse')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import QUANT_RECIPES, QuantRecipe

if TYPE_CHECKING:
    from torch import nn


@QUANT_RECIPES.register("uniform")
@dataclass(frozen=True)
class Uniform(QuantRecipe):
    """Per-channel weights and per-tensor inputs of every Conv2d/Linear (but stem and head, unless `targets` says):
    `w_symmetric` / `a_symmetric` grids, `percentile` for the ``percentile`` range method."""

    label = "uniform"
    blurb = "Conv2d/Linear weights and inputs"
    range_methods = ("minmax", "percentile", "mse")

    w_symmetric: bool = True
    a_symmetric: bool = False
    percentile: float = 99.99

    def backend_kwargs(self, w_granularity: str, a_granularity: str, method: str | None, a_method: str | None,
                       targets: Any) -> dict[str, Any]:
        method = method or self.range_methods[0]
        self.check_method("method", method)
        self.check_method("a_method", a_method or method)
        return {"w_granularity": w_granularity, "a_granularity": a_granularity, "method": method,
                "a_method": a_method, "targets": targets, **self.config()}

    def quantize(self, model: nn.Module, w_bits: int | None, a_bits: int | None, calib: Any,
                 **kwargs: Any) -> nn.Module:
        from ..quant import quantize

        return quantize(model, w_bits=w_bits, a_bits=a_bits, calib=calib, **kwargs)
