"""Momentum-SAM (Becker et al., 2024; marlonbecker/msam): one pass at w + ε with ε = −ρ T² m / ‖T m‖, m the base
optimizer's first moment (SGD's ``momentum_buffer``, Adam's ``exp_avg``); ε = 0 until m exists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import SAM_MODES_REGISTRY, Mode

if TYPE_CHECKING:
    from ..sam import SAM


@SAM_MODES_REGISTRY.register("msam")
@dataclass
class MomentumSam(Mode):
    """Perturb along minus the momentum: no extra pass."""

    closure = False

    def plan(self, opt: SAM) -> bool:
        return False

    def perturb(self, opt: SAM) -> None:
        moments = {}
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.base_optimizer.state.get(p, {})
                m = st.get("exp_avg", st.get("momentum_buffer"))
                if m is not None:
                    moments[p] = -m
        opt._ascend(moments)
