"""Weight noise in the forward pass: a one-pass, sharpness-directed stand-in for SNT's transformation.

In training mode every targeted layer computes with W + ε, ε drawn afresh at every forward pass, filter-wise:
for output row / filter i, ε_i ~ N(0, (σ·‖W_i‖₂)² I), the noise of random weight perturbation (RWP, arXiv
2211.11489; m-RWP / ARWP, arXiv 2404.00357). The gradient of the noisy loss, taken at W + ε, is
applied to W: training minimizes E_ε[L(W + ε)], a smoothed loss that penalizes curvature, at the cost of one
forward and backward pass per step (SAM needs two, one after the other). In eval mode there is no noise, so
folding only removes the wrapper. BatchNorm running statistics gathered in training mode describe the noisy
weights (wider activations than the clean ones give), so :func:`craftlab.pretrain` re-estimates them on the
training images after folding (``Transform.stale_batchnorm``; mARWP avoids this differently: its clean pass
updates the statistics and the perturbed pass freezes them).

Differences from RWP (CraftLab's choices): only the perturbed term is trained (λ = 1 in m-RWP's
L_mix = λ·E[L(w + ε)] + (1 − λ)·L(w); RWP and m-RWP use λ = 0.5 with a second, clean gradient); only the
weights of Linear/Conv2d layers are perturbed (RWP also perturbs biases and norm parameters, with the norm of
the whole vector); σ is constant (ARWP adapts it). The noise comes from a private generator per layer, seeded
by ``apply(model, seed)``: the caller's RNG is never drawn from.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Transform, check_number, register_transform


class NoisyWeight(nn.Module):
    """weight = W + σ·‖W_i‖·N(0, I) per output row i in training mode; W in eval mode."""

    def __init__(self, sigma: float, seed: int):
        super().__init__()
        self.sigma, self.seed, self.calls = float(sigma), int(seed), 0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma == 0:
            return w
        gen = torch.Generator(device=w.device).manual_seed((self.seed + self.calls) % 2**63)
        self.calls += 1
        noise = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
        scale = self.sigma * w.detach().flatten(1).norm(dim=1)
        return w + noise * scale.view(-1, *[1] * (w.ndim - 1))


@register_transform("weight-noise")
class WeightNoise(Transform):
    """Filter-normalized Gaussian weight noise during training (stand-in for SNT's unpublished transformation).

    Every ``Linear`` and ``Conv2d`` weight gets noise of std σ·‖W_i‖ per output row / filter in training mode;
    none in eval mode; ``fold`` removes the wrapper. One pass per step. Reference: random weight perturbation
    (RWP, arXiv 2211.11489) and "Revisiting Random Weight Perturbation for Efficiently Improving Generalization"
    (m-RWP, TMLR 2024, arXiv 2404.00357); their CIFAR defaults are σ = 0.01 (RWP) and 0.015 (m-RWP).

    Example::

        noisy = craftlab.transforms.get_transform("weight-noise", sigma=0.01).apply(model, seed=0)
    """

    reference = ("random weight perturbation: RWP, arXiv 2211.11489; m-RWP, arXiv 2404.00357 "
                 "(perturbed term only, one pass per step; stand-in for SNT)")
    defaults = {"sigma": 0.01}
    stale_batchnorm = True  # running statistics gathered under noise are too wide for the clean weights

    def check_params(self) -> None:
        check_number("weight-noise sigma", self.params["sigma"], 0.0)
        self.params["sigma"] = float(self.params["sigma"])

    def parametrization(self, module: nn.Module, generator: torch.Generator) -> nn.Module:
        return NoisyWeight(self.params["sigma"], int(torch.randint(2**62, (1,), generator=generator)))
