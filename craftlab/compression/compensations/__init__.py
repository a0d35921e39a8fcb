"""Closed-form compensations of a compressed model's error, one module per method (``craftlab.compensate(method=...)``).

A compensation is a :class:`Compensation` registered in :data:`COMPENSATION_METHODS`; its module is named after it
(``qwt_v2.py`` is ``"qwt-v2"``) and is light to import (torch is imported where it fits). Add a method by adding a
module here: ``placements`` says which modules it fits (blocks or layers), ``fit`` fits them one after another on
the compensated stream and returns one report row per module. The shared machinery (streaming the calibration
images, least squares, R² gate, folding) is in :mod:`craftlab.compression.compensate` and ``_lstsq``. Example::

    from craftlab.registry import COMPENSATION_METHODS
    COMPENSATION_METHODS.names()                  # ('qwt', 'qwt-v2')
    COMPENSATION_METHODS.get("qwt-v2").label      # 'QwT-v2'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ...registry import COMPENSATION_METHODS

if TYPE_CHECKING:
    from torch import nn

__all__ = ["COMPENSATION_METHODS", "Compensation"]


@dataclass(frozen=True)
class Compensation:
    """A closed-form compensation. `label`: how settings name it (``W4A4 + QwT``); `default_target`: what each fit
    aims at unless the caller says (``same-input`` or ``reference``); `foldable`: it folds into the layers; `aliases`:
    other spellings people type (``cwac`` for ``qwt-v2``); `blurb`: a few words a choice list shows beside the label."""

    label: ClassVar[str] = ""
    blurb: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    default_target: ClassVar[str] = "reference"
    foldable: ClassVar[bool] = False

    def placements(self, work: nn.Module, reference: nn.Module, blocks: Sequence[str] | None,
                   placement: str | Sequence[str]) -> list[str]:
        """Names of the modules of `work` to compensate (before tracing their forward order)."""
        raise NotImplementedError

    def fit(self, work: nn.Module, reference: nn.Module, names: list[str], batches: list[Any], opts: dict[str, Any],
            mods: dict[str, nn.Module], ref_mods: dict[str, nn.Module],
            next_bn: dict[str, nn.Module]) -> list[dict[str, Any]]:
        """Fit and install the compensation of each module in `names` (in `work`, in place); the report rows."""
        raise NotImplementedError
