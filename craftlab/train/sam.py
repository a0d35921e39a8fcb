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

Efficient modes (``mode=``, one optimizer; one module each in :mod:`craftlab.train.sam_modes`; see :data:`SAM_MODES`
and :func:`parse_sam_mode`):

* ``"sam"``: the update above on every step (two passes).
* ``"looksam"`` (LookSAM, Liu et al. 2022): the two-pass step on every ``interval``-th step only; it keeps
  ĝ_v, the unit component of g' orthogonal to g. The one-pass steps in between use g + α‖g‖ĝ_v.
* ``"random"`` (ESAM-style step selection; Du et al. 2022 select data, this selects steps): the two-pass step
  with probability ``fraction``, a plain base step otherwise. The draws come from a private generator seeded
  by ``seed``.
* ``"msam"`` (Momentum-SAM, Becker et al. 2024): one pass at w + ε with ε = −ρ T² m / ‖T m‖, m the base
  optimizer's first moment (SGD's ``momentum_buffer``, Adam's ``exp_avg``), as marlonbecker/msam; ε = 0 until m
  exists.
* ``"rwp"`` (random weight perturbation, Bisla et al. 2022 / Li et al. 2024): one pass at w + ε with
  ε_i ~ N(0, (ρ‖W_i‖)² I) per output row i of every parameter with 2+ dimensions (ρ plays RWP's σ), noise from
  the private generator.

One-pass modes take ``perturb()`` → forward/backward → ``second_step()``; :meth:`SAM.plan_step` tells a
training loop which kind of step comes next. With ``interval=1`` or ``fraction=1`` the modes are plain SAM.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import SAM_MODES_REGISTRY


@contextlib.contextmanager
def frozen_bn(model: nn.Module | None) -> Iterator[None]:
    """BatchNorm layers use batch statistics but do not update running stats (nor the batch counter).

    Example::

        with frozen_bn(model):
            loss_fn(model(x), y).backward()   # the perturbed pass leaves the BatchNorm statistics alone
    """
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


SAM_MODES = {name: mode.default for name, mode in SAM_MODES_REGISTRY.all().items()}
"""Mode name → default value (LookSAM's interval k, the random mode's fraction; None: the mode takes none); the
modes are the modules of :mod:`craftlab.train.sam_modes`."""


class SamMode(NamedTuple):
    """A parsed ``sam_mode``: the mode's name and its value (interval or fraction; None for the others)."""

    name: str
    value: int | float | None = None

    def spec(self) -> str:
        """Canonical text: ``"sam"``, ``"looksam:5"``, ``"random:0.5"``, ``"msam"``, ``"rwp"``."""
        return self.name if self.value is None else f"{self.name}:{self.value:g}"

    def options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`SAM` for this mode."""
        option = SAM_MODES_REGISTRY.get(self.name).option
        return {"mode": self.name, **({option: self.value} if option else {})}


def parse_sam_mode(text: str | SamMode) -> SamMode:
    """Read ``"sam"``, ``"looksam"`` / ``"looksam:K"`` (SAM every K-th step, default 5), ``"random"`` /
    ``"random:F"`` (SAM on a fraction F in (0, 1] of the steps, default 0.5), ``"msam"`` or ``"rwp"``.

    Example::

        >>> parse_sam_mode("looksam:4")
        SamMode(name='looksam', value=4)
        >>> parse_sam_mode("random").spec()
        'random:0.5'
    """
    if isinstance(text, SamMode):
        text = text.spec()
    if not isinstance(text, str):
        raise ValueError(f"sam_mode must be a string such as 'sam', 'looksam:5', 'random:0.5', 'msam' or 'rwp', "
                         f"got {text!r}")
    name, _, raw = text.strip().lower().partition(":")
    if name not in SAM_MODES_REGISTRY:
        shown = ", ".join(f"'{n}[:{'K' if m.option == 'interval' else 'F'}]'" if m.option else f"'{n}'"
                          for n, m in SAM_MODES_REGISTRY.all().items())
        raise ValueError(f"unknown sam_mode {text!r}; choose one of {shown}")
    mode = SAM_MODES_REGISTRY.get(name)
    if mode.option is None:
        if raw:
            raise ValueError(f"sam_mode {name!r} takes no value, got {text!r}")
        return SamMode(name)
    try:
        value = float(raw) if raw else float(mode.default)
    except ValueError:
        raise ValueError(f"sam_mode {text!r}: the value after ':' must be a number") from None
    try:
        return SamMode(name, mode.check(value))
    except ValueError as err:
        raise ValueError(f"sam_mode {text!r}: {err}") from None


class SAM(torch.optim.Optimizer):
    """SAM/ASAM wrapper around a base optimizer class.

    Args:
        params: parameters or parameter groups.
        base_optimizer: a ``torch.optim.Optimizer`` class (not an instance), e.g. ``torch.optim.AdamW``.
        rho: radius of the neighbourhood (SAM: ~0.05; ASAM needs about 10x larger, e.g. 0.5-2).
        adaptive: ASAM's scale-invariant ball (element-wise T = |w| + eta).
        eta: ASAM's η (added to |w|; 0 reproduces davda54/sam's ``adaptive=True``).
        model: optional; when given, ``step(closure)`` freezes BatchNorm statistics in the second pass.
        mode: ``"sam"`` (default), ``"looksam"``, ``"random"``, ``"msam"`` or ``"rwp"`` (see the module doc).
        interval: LookSAM's k (a two-pass step every k-th step). alpha: LookSAM's α (0.7, as the paper).
        fraction: the random mode's share of two-pass steps, in (0, 1].
        seed: seeds the private generator of the random and rwp modes (never the global RNG).
        **kwargs: passed to the base optimizer (lr, weight_decay, momentum, ...).

    Example::

        opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, mode="looksam", interval=5, lr=1e-3)
        if opt.plan_step():                      # two passes: gradient at w, then at w + ε
            loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)
        else:
            opt.perturb()                        # msam / rwp move w; looksam / random do nothing
        loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, eta: float = 0.0, model: nn.Module | None = None, mode: str = "sam",
                 interval: int = 1, fraction: float = 1.0, alpha: float = 0.7, seed: int = 0, **kwargs: Any):
        if not rho >= 0.0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError("base_optimizer must be a torch.optim.Optimizer class, e.g. torch.optim.SGD")
        if mode not in SAM_MODES_REGISTRY:
            raise ValueError(f"mode must be one of {SAM_MODES_REGISTRY.names()}, got {mode!r}")
        if not (isinstance(interval, numbers.Integral) and not isinstance(interval, bool) and interval >= 1):
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        if not (isinstance(fraction, numbers.Real) and 0.0 < fraction <= 1.0):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        defaults = dict(rho=rho, adaptive=adaptive, eta=eta, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model
        self.mode, self.interval, self.fraction, self.alpha = mode, int(interval), float(fraction), float(alpha)
        rule = SAM_MODES_REGISTRY.get(mode)
        given = {"interval": self.interval, "fraction": self.fraction, "alpha": self.alpha}
        self.rule = rule(**{k: v for k, v in given.items() if k in rule.__dataclass_fields__})
        self.steps = 0  # base-optimizer steps taken (second_step calls)
        self._generator = torch.Generator().manual_seed(int(seed))
        self._two_pass: bool | None = None  # the plan of the step under way

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

    def plan_step(self) -> bool:
        """Decide the coming step, once per step before its first forward pass: True for a two-pass SAM step
        (gradient at w, :meth:`first_step`, gradient at w + ε, :meth:`second_step`), False for a one-pass step
        (:meth:`perturb`, gradient, :meth:`second_step`). ``"sam"`` always plans two passes; ``"looksam"`` on
        every ``interval``-th step; ``"random"`` with probability ``fraction`` (one draw from the private
        generator per call); ``"msam"`` and ``"rwp"`` never."""
        two = self.rule.plan(self)
        self._two_pass = two
        return two

    @torch.no_grad()
    def _ascend(self, direction: dict[torch.Tensor, torch.Tensor]) -> None:
        """w ← w + ρ T² d / ‖T d‖ for the parameters in `direction` (nothing when ‖T d‖ is 0 or not finite)."""
        norms = [(self._scale(p, g) * direction[p]).norm(p=2).to(self._device())
                 for g in self.param_groups for p in g["params"] if p in direction]
        norm = torch.stack(norms).norm(p=2) if norms else torch.zeros((), device=self._device())
        ok = bool(torch.isfinite(norm)) and float(norm) > 0.0
        for group in self.param_groups:
            for p in group["params"]:
                if p not in direction:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                if ok:
                    p.add_((self._scale(p, group) ** 2) * direction[p] * (group["rho"] / norm))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """w ← w + ε(w) with ε = ρ T² g / ‖T g‖ (the ascent step). Needs gradients at w."""
        grads = {p: p.grad for g in self.param_groups for p in g["params"] if p.grad is not None}
        self.rule.after_ascent(self, grads)
        self._ascend(grads)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def perturb(self) -> None:
        """The one-pass modes' move before the forward pass: ``"msam"`` w ← w − ρ T² m / ‖T m‖ (m: the base
        optimizer's first moment; nothing before the first step), ``"rwp"`` w ← w + ρ‖W_i‖·N(0, I) per output
        row of every parameter with 2+ dimensions; the other modes do nothing. :meth:`second_step` restores w."""
        self.rule.perturb(self)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore w and take the base optimizer's step with the gradient taken at the perturbed point (or,
        for a LookSAM one-pass step, with the gradient at w plus the reused component)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.data.copy_(self.state[p].pop("old_p"))
        self.rule.before_base_step(self)
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self.steps += 1
        self._two_pass = None
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One SAM step. ``closure`` must zero nothing, run forward + backward and return the loss.

        Gradients at w must already be there (davda54 convention: call ``loss.backward()`` first);
        the closure is called once, at w + ε, with BatchNorm statistics frozen when ``model`` was given, and
        its loss returned. In the ``"looksam"`` and ``"random"`` modes a one-pass step calls no closure and
        returns None. ``"msam"`` and ``"rwp"`` need their gradient at the perturbed point: use
        :meth:`perturb` before the forward pass, then :meth:`second_step`.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss (or call first_step/second_step)")
        if not self.rule.closure:
            raise ValueError(f"mode {self.mode!r} takes its one gradient at the perturbed point: call perturb() "
                             "before the forward pass, then second_step() (step(closure) cannot)")
        two = self._two_pass if self._two_pass is not None else self.plan_step()
        if not two:
            self.second_step()
            return None
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
        state["sam_steps"], state["sam_generator"] = self.steps, self._generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, the base optimizer's state included (a state dict without it,
        from an older craftlab, restores the param groups only)."""
        state_dict = dict(state_dict)
        base = state_dict.pop("base_optimizer", None)
        self.steps = int(state_dict.pop("sam_steps", 0))
        generator = state_dict.pop("sam_generator", None)
        if generator is not None:
            self._generator.set_state(generator)
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
        if base is not None:
            self.base_optimizer.load_state_dict(base)
            self.param_groups = self.base_optimizer.param_groups  # one list of groups, shared again
