"""Post-training quantization recipes, one module per recipe (``craftlab.quantize(recipe=...)``).

A recipe is a :class:`QuantRecipe` registered in :data:`QUANT_RECIPES`; its module is named after it
(``repq.py`` is ``"repq"``) and is light to import (torch is imported where it quantizes), so settings, the
command line and the app read its names, label, aliases, range methods and options without loading torch. The
dataclass fields of a recipe are its own options, with their defaults (``Uniform(percentile=99.9)``); the
class variables say what it accepts. Add a recipe by adding a module here, or register one from your own code::

    from dataclasses import dataclass
    from craftlab.compression.recipes import QUANT_RECIPES
    from craftlab.compression.recipes.uniform import Uniform

    @QUANT_RECIPES.register("symmetric")
    @dataclass(frozen=True)
    class Symmetric(Uniform):
        '''Uniform with symmetric activation grids.'''
        label = "symmetric"
        a_symmetric: bool = True

    craftlab.quantize(model, 4, 8, calib=data.calib, recipe="symmetric")

>>> from craftlab.registry import QUANT_RECIPES
>>> QUANT_RECIPES.get("repq").label, QUANT_RECIPES.get("uniform").range_methods[0]
('RepQ-ViT', 'minmax')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from ..._errors import unknown_name
from ...registry import QUANT_RECIPES

if TYPE_CHECKING:
    from torch import nn

__all__ = ["QUANT_RECIPES", "QuantRecipe"]


@dataclass(frozen=True)
class QuantRecipe:
    """A post-training quantization recipe; its dataclass fields are its options (``calib_samples``: stop
    calibrating after this many images).

    `label`: how a choice list names it; `blurb`: a few words beside the label; `aliases`: other spellings people
    type; `range_methods`: its weight range methods, the default first (activations use the same unless told);
    `a_granularities`: the activation granularities it supports (and `a_granularity_reason` why, when not both);
    `takes_targets`: it quantizes the layers the caller names (else its own choice of layers);
    `weight_path_problem`: why a model it quantized is not a point ``C(w)`` of the original's weight space (the
    landscape probes need one), or None.
    """

    label: ClassVar[str] = ""
    blurb: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    range_methods: ClassVar[tuple[str, ...]] = ("minmax",)
    a_granularities: ClassVar[tuple[str, ...]] = ("tensor", "channel")
    a_granularity_reason: ClassVar[str] = ""
    takes_targets: ClassVar[bool] = True
    weight_path_problem: ClassVar[str | None] = None

    calib_samples: int | None = None

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The recipe's own keyword options (its dataclass fields)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def name(cls) -> str:
        """The name it is registered under."""
        return next(n for n in QUANT_RECIPES.names() if QUANT_RECIPES.get(n) is cls)

    @classmethod
    def check_a_granularity(cls, a_granularity: str) -> None:
        """ValueError when the recipe cannot quantize activations at `a_granularity`."""
        if a_granularity not in cls.a_granularities:
            why = f" ({cls.a_granularity_reason})" if cls.a_granularity_reason else ""
            allowed = " or ".join(repr(g) for g in cls.a_granularities)
            raise ValueError(f"recipe {cls.name()!r} quantizes activations per {' or per '.join(cls.a_granularities)}"
                             f"{why}: a_granularity must be {allowed}")

    def check_method(self, what: str, value: str) -> None:
        """ValueError naming `value` when it is none of the recipe's range methods (and which recipe has it)."""
        if value not in self.range_methods:
            owner = [n for n in QUANT_RECIPES.names() if value in QUANT_RECIPES.get(n).range_methods]
            hint = f"{value!r} is a range estimator of recipe {owner[0]!r}" if owner else ""
            raise unknown_name(f"{what} of recipe {self.name()!r}", value, self.range_methods, hint=hint)

    def backend_kwargs(self, w_granularity: str, a_granularity: str, method: str | None, a_method: str | None,
                       targets: Any) -> dict[str, Any]:
        """Validate the common arguments for this recipe and return its quantizer's keyword arguments (its options
        included). Bits and calibration are checked by the caller."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        """ValueError when the recipe cannot quantize `model` (default: any model)."""

    def quantize(self, model: nn.Module, w_bits: int | None, a_bits: int | None, calib: Any,
                 **kwargs: Any) -> nn.Module:
        """A quantized copy of `model` (`kwargs`: :meth:`backend_kwargs`'s result)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The recipe's options as a dict."""
        return asdict(self)
