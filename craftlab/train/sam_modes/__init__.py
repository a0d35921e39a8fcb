"""SAM's modes, one module per mode (``SAM(mode=...)``, ``finetune(sam_mode=...)``, ``craftlab finetune --sam-mode``).

A mode is a :class:`Mode` registered in :data:`SAM_MODES_REGISTRY` (module ``looksam.py`` is ``"looksam"``); it
decides each step's kind and adds what it needs around the optimizer's steps. Modules are light to import (torch
inside the hooks). The hooks get the :class:`~craftlab.train.sam.SAM` optimizer, whose ``param_groups``, ``state``,
``base_optimizer``, private ``_generator`` and ``_ascend(direction)`` (w ← w + ρ T² d / ‖T d‖) they may use.

Add a mode by adding a module here; the optimizer, ``parse_sam_mode``, the CLI and the app list it. Example::

    from craftlab.registry import SAM_MODES_REGISTRY
    SAM_MODES_REGISTRY.names()                    # ('looksam', 'msam', 'random', 'rwp', 'sam')
    SAM_MODES_REGISTRY.get("looksam").default     # 5 (LookSAM's interval k)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ...registry import SAM_MODES_REGISTRY

if TYPE_CHECKING:
    import torch

    from ..sam import SAM

__all__ = ["SAM_MODES_REGISTRY", "Mode"]


@dataclass
class Mode:
    """One SAM mode (an instance per optimizer: it may keep state between steps).

    `option`: the name of its one value as a :class:`~craftlab.train.sam.SAM` keyword (``"interval"``,
    ``"fraction"``) or None; `default`: that value's default; `closure`: whether ``SAM.step(closure)`` can run it
    (a mode whose one gradient is taken at a perturbed point cannot).
    """

    option: ClassVar[str | None] = None
    default: ClassVar[float | int | None] = None
    closure: ClassVar[bool] = True

    @classmethod
    def check(cls, value: float) -> float | int:
        """The mode's value, validated (ValueError naming the problem)."""
        return value

    def plan(self, opt: SAM) -> bool:
        """True: the coming step takes two passes (gradient at w, ascent, gradient at w + ε); False: one."""
        return True

    def perturb(self, opt: SAM) -> None:
        """The move before a one-pass step's forward pass (``SAM.second_step`` restores w)."""

    def after_ascent(self, opt: SAM, grads: dict[torch.Tensor, torch.Tensor]) -> None:
        """Called in ``first_step`` with the gradients at w, before the ascent."""

    def before_base_step(self, opt: SAM) -> None:
        """Called in ``second_step`` after w is restored, before the base optimizer's step."""

    def options(self) -> dict[str, Any]:
        """Its ``SAM`` keyword arguments (beside ``mode``)."""
        return {}
