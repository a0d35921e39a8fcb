"""LookSAM (Liu et al., 2022): the two-pass step on every k-th step; the one-pass steps in between reuse the last
ascent's information, g + α‖g‖ĝ_v, ĝ_v the unit component of g' orthogonal to g."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import SAM_MODES_REGISTRY, Mode

if TYPE_CHECKING:
    import torch

    from ..sam import SAM


@SAM_MODES_REGISTRY.register("looksam")
@dataclass
class LookSam(Mode):
    """`interval`: k (a two-pass step every k-th step); `alpha`: α (0.7, as the paper)."""

    interval: int = 5
    alpha: float = 0.7
    option = "interval"
    default = 5

    @classmethod
    def check(cls, value: float) -> int:
        if not (float(value).is_integer() and value >= 1):
            raise ValueError("LookSAM's interval must be a positive integer")
        return int(value)

    def plan(self, opt: SAM) -> bool:
        return opt.steps % self.interval == 0

    def after_ascent(self, opt: SAM, grads: dict[torch.Tensor, torch.Tensor]) -> None:
        for p, g in grads.items():
            opt.state[p]["looksam_g"] = g.detach().clone()

    def before_base_step(self, opt: SAM) -> None:
        """After a two-pass step: keep ĝ_v. After a one-pass step: g ← g + α‖g‖ĝ_v."""
        import torch

        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        if "looksam_g" in opt.state[params[0]]:
            g = {p: opt.state[p].pop("looksam_g") for p in params}
            dot = sum((p.grad * g[p]).sum() for p in params)
            g_sq = sum((g[p] ** 2).sum() for p in params)
            coef = dot / g_sq if float(g_sq) > 0 else torch.zeros(())
            gv = {p: p.grad - coef * g[p] for p in params}
            gv_norm = torch.sqrt(sum((v ** 2).sum() for v in gv.values()))
            if bool(torch.isfinite(gv_norm)):
                for p in params:
                    opt.state[p]["looksam_gv"] = gv[p] / gv_norm if float(gv_norm) > 0 else torch.zeros_like(p)
        else:
            g_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
            for p in params:
                if "looksam_gv" in opt.state[p]:
                    p.grad.add_(opt.state[p]["looksam_gv"] * (self.alpha * g_norm))

    def options(self) -> dict[str, Any]:
        return {"interval": self.interval, "alpha": self.alpha}
