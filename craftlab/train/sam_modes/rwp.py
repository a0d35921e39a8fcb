"""Random weight perturbation (Bisla et al. 2022 / Li et al. 2024): one pass at w + ε with
ε_i ~ N(0, (ρ‖W_i‖)² I) per output row i of every parameter with 2+ dimensions (ρ plays RWP's σ), the noise from
the optimizer's private generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import SAM_MODES_REGISTRY, Mode

if TYPE_CHECKING:
    from ..sam import SAM


@SAM_MODES_REGISTRY.register("rwp")
@dataclass
class RandomWeightPerturbation(Mode):
    """Filter-normalized Gaussian weight noise: no extra pass."""

    closure = False

    def plan(self, opt: SAM) -> bool:
        return False

    def perturb(self, opt: SAM) -> None:
        import torch

        for group in opt.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    continue
                noise = torch.randn(p.shape, generator=opt._generator, dtype=p.dtype).to(p.device)
                scale = group["rho"] * p.detach().flatten(1).norm(dim=1).view(-1, *[1] * (p.ndim - 1))
                opt.state[p]["old_p"] = p.detach().clone()
                p.add_(noise * scale)
