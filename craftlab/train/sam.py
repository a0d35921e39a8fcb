"""Sharpness-Aware Minimization (SAM, Foret et al. 2021) and its adaptive variant (ASAM, Kwon et al. 2021).

The API follows davda54/sam (``first_step`` / ``second_step`` / ``step(closure)`` / ``base_optimizer``)
and adds what it lacks:

* BatchNorm: give ``model=`` and ``step(closure)`` runs the perturbed pass with BatchNorm running
  statistics frozen (or use :func:`frozen_bn` around your own second forward).
* A zero-gradient guard: ``‖g‖ = 0`` (or a non-finite norm under AMP) gives no perturbation, never NaN.
* Schedulers: ``param_groups`` are shared with the base optimizer, so a scheduler built on either one
  changes the learning rate the base optimizer uses.
* AMP: the perturbation ``ρ g/‖g‖`` is invariant to the loss scale, so with a ``GradScaler`` call
  ``first_step`` on the scaled gradients, and ``second_step(scaler=scaler)`` to let the scaler unscale,
  skip on inf/NaN and step the base optimizer. bf16 autocast needs no scaler at all.

Update (p = 2):  ε = ρ · T² g / ‖T g‖,  T = |w| + η for ASAM (``adaptive=True``), T = I for SAM;
then w ← w + ε, g' = ∇L(w + ε), w ← w − ε, base_optimizer.step() with g'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def frozen_bn(model: nn.Module | None) -> Iterator[None]:
    """BatchNorm layers use batch statistics but do not update running stats (nor the batch counter)."""
    if model is None:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False  # forward then neither reads nor writes the running buffers
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


class SAM(torch.optim.Optimizer):
    """SAM/ASAM wrapper around a base optimizer class.

    Args:
        params: parameters or parameter groups.
        base_optimizer: a ``torch.optim.Optimizer`` class (not an instance), e.g. ``torch.optim.AdamW``.
        rho: radius of the neighbourhood (SAM: ~0.05; ASAM needs about 10x larger, e.g. 0.5-2).
        adaptive: ASAM's scale-invariant ball (element-wise T = |w| + eta).
        eta: ASAM's η (added to |w|; 0 reproduces davda54/sam's ``adaptive=True``).
        model: optional; when given, ``step(closure)`` freezes BatchNorm statistics in the second pass.
        **kwargs: passed to the base optimizer (lr, weight_decay, momentum, ...).
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, eta: float = 0.0, model: nn.Module | None = None, **kwargs: Any):
        if not rho >= 0.0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError("base_optimizer must be a torch.optim.Optimizer class, e.g. torch.optim.SGD")
        defaults = dict(rho=rho, adaptive=adaptive, eta=eta, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model

    @staticmethod
    def _scale(p: torch.Tensor, group: dict) -> torch.Tensor | float:
        return (torch.abs(p) + group["eta"]) if group["adaptive"] else 1.0

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [(self._scale(p, g) * p.grad).norm(p=2).to(self._device())
                 for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not norms:
            return torch.zeros((), device=self._device())
        return torch.stack(norms).norm(p=2)

    def _device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """w ← w + ε(w) with ε = ρ T² g / ‖T g‖ (the ascent step). Needs gradients at w."""
        grad_norm = self._grad_norm()
        ok = bool(torch.isfinite(grad_norm)) and float(grad_norm) > 0.0
        for group in self.param_groups:
            scale = group["rho"] / grad_norm if ok else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = (self._scale(p, group) ** 2) * p.grad * scale if ok else torch.zeros_like(p)
                self.state[p]["old_p"] = p.detach().clone()
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore w and take the base optimizer's step with the gradient taken at w + ε."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.data.copy_(self.state[p].pop("old_p"))
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """One SAM step. ``closure`` must zero nothing, run forward + backward and return the loss.

        Gradients at w must already be there (davda54 convention: call ``loss.backward()`` first);
        the closure is called once, at w + ε, with BatchNorm statistics frozen when ``model`` was given.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss (or call first_step/second_step)")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        with frozen_bn(self.model):
            loss = closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """SAM's own state and param groups (ρ, ``adaptive``, η and the base optimizer's hyperparameters), with
        the base optimizer's state (Adam's moments, SGD's momentum buffers) under ``"base_optimizer"``."""
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, the base optimizer's state included (a state dict without it,
        from an older craftlab, restores the param groups only)."""
        state_dict = dict(state_dict)
        base = state_dict.pop("base_optimizer", None)
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
        if base is not None:
            self.base_optimizer.load_state_dict(base)
            self.param_groups = self.base_optimizer.param_groups  # one list of groups, shared again
