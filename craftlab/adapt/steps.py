"""One training step of any adaptation method on a fixed batch (:func:`training_step`) and what it holds
(:func:`method_memory`): the memory columns of the adaptation study."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..measure.memory import TrainingMemory, measure_step
from .methods import SideMethod
from .recipes import configure
from .taps import tap_batch

__all__ = ["Step", "method_memory", "training_step"]


@dataclass
class Step:
    """One method's training step on a fixed batch: ``loss_fn`` (forward), the trained ``net``, its
    ``optimizer`` and the ``frozen`` modules the forward also runs (a side method's backbone)."""

    loss_fn: Callable[[], torch.Tensor]
    net: nn.Module
    optimizer: torch.optim.Optimizer
    frozen: list[nn.Module]
    inputs: list[torch.Tensor] = field(default_factory=list)

    def run(self) -> float:
        """One plain training step (SAM: both passes); returns the loss."""
        from ..train.sam import SAM

        loss = self.loss_fn()
        loss.backward()
        if isinstance(self.optimizer, SAM):
            self.optimizer.first_step(zero_grad=True)
            self.loss_fn().backward()
            self.optimizer.second_step(zero_grad=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def memory(self) -> TrainingMemory:
        """What one step holds (:func:`~craftlab.measure.memory.measure_step`; it trains one step)."""
        return measure_step(self.loss_fn, self.net, self.optimizer, frozen=self.frozen, inputs=self.inputs)


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "last", *,
                  num_classes: int | None = None, lr: float = 1e-3, **options: Any) -> Step:
    """A :class:`Step` of `method` (any registered one; `options`: its config, e.g. ``rank``, ``heads``, ``gap``,
    ``k``, ``lora_rank``, ``sam_rho``) on the batch (x, y) with AdamW (SAM when the method's ``sam_rho > 0``).
    Side methods tap the backbone inside the step (under no grad); the others train a copy: `model` is not
    changed.

    >>> training_step(model, x, y, "last").memory().total_bytes  # doctest: +SKIP
    """
    num_classes = num_classes or int(y.max()) + 1
    cfg = configure(method, **options)
    if isinstance(cfg, SideMethod):
        from ..models import SeededRNG

        taps, view = cfg.spec(model)
        with SeededRNG(0):
            side = cfg.build(model, taps, num_classes).to(x.device).train()
        tapped = tap_batch(model, x, taps)  # the side network's input: held for the step (counted as input bytes)
        return Step(lambda: F.cross_entropy(side(view(*tapped)), y), side,
                    torch.optim.AdamW(side.parameters(), lr=lr), [model], list(tapped))
    net = cfg.prepare(model).train()
    params = [p for p in net.parameters() if p.requires_grad]
    sam_rho = float(getattr(cfg, "sam_rho", 0.0))
    if sam_rho > 0:
        from ..train.sam import SAM

        opt: torch.optim.Optimizer = SAM(params, torch.optim.AdamW, rho=sam_rho, model=net, lr=lr)
    else:
        opt = torch.optim.AdamW(params, lr=lr)
    return Step(lambda: F.cross_entropy(net(x), y), net, opt, [], [x])


def method_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "last",
                  **kwargs: Any) -> TrainingMemory:
    """What one training step of `method` on (x, y) holds: ``training_step(...).memory()``.

    >>> method_memory(model, x, y, "lora").optimizer_bytes  # doctest: +SKIP
    """
    return training_step(model, x, y, method, **kwargs).memory()
