"""ExpandNets-style linear expansion that folds back exactly (a stand-in for SNT's transformation;
:mod:`craftlab.transforms.repvgg` is the other over-parameterization).

Both are stand-ins for SNT's unpublished transformation (arXiv 2305.04526v1 names "an architectural
transformation" applied during pretraining and nothing more): transformations known to change the training
dynamics of a network while computing the same function class, so that they fold away after training.

* ``expand`` (ExpandNets, Guo, Alvarez & Salzmann, NeurIPS 2020, arXiv 1811.10495): a ``Linear`` n→m is
  trained as two linear layers n→r·n→m (W = W₂W₁), a k×k ``Conv2d`` I→O as 1×1 I→r·I, k×k r·I→r·O,
  1×1 r·O→O (ExpandNets' "CL" expansion). Inner factors carry no bias, so the contraction is exact at the
  borders too; the bias stays on the last factor.
* ``repvgg`` (RepVGG, arXiv 2101.03697): a k×k ``Conv2d`` (odd k, padding k//2, groups 1)
  is trained as k×k + 1×1 + identity branches (identity only when in = out channels and stride 1), whose
  kernels add up. RepVGG puts a BatchNorm in every branch; here the branches are BN-free (the network's
  own normalization follows the sum), so folding is a plain kernel sum.

Differences from the papers, all CraftLab's choices: the factors are applied as a parametrization (the weight
is the product / sum, computed once per step, instead of running the factor layers on the activations: the
same function and gradients, a fraction of the cost); ``apply`` starts from the model's current function
(ExpandNets and RepVGG initialise their layers afresh): ``expand`` splits each weight with random matrices
with orthonormal columns (W₂ = W·Qᵀ, W₁ = Q, so W₂W₁ = W), ``repvgg`` starts its extra branches at zero.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Transform, check_number, register_transform


def _orthonormal_columns(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A random rows×cols matrix with orthonormal columns (rows >= cols)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # sign fix: the Haar measure, not QR's convention


class ExpandedWeight(nn.Module):
    """weight = Pᵀ · W_mid · Q on the (out, in) axes of a weight tensor (P omitted for Linear).

    ``Q`` (r·in × in, orthonormal columns at the start) is the first 1×1 / linear factor, ``W_mid`` (the
    parametrization's ``original``) the middle layer, ``P`` (r·out × out) the last 1×1 factor, transposed.
    """

    def __init__(self, weight: torch.Tensor, rate: int, outer: bool, generator: torch.Generator):
        super().__init__()
        out_ch, in_ch = weight.shape[:2]
        self.q = nn.Parameter(_orthonormal_columns(rate * in_ch, in_ch, generator).to(weight))
        self.p = nn.Parameter(_orthonormal_columns(rate * out_ch, out_ch, generator).to(weight)) if outer else None

    def forward(self, mid: torch.Tensor) -> torch.Tensor:
        w = torch.einsum("oq...,qi->oi...", mid, self.q)
        return w if self.p is None else torch.einsum("po,pi...->oi...", self.p, w)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        mid = torch.einsum("oi...,qi->oq...", weight, self.q)
        return mid if self.p is None else torch.einsum("po,oi...->pi...", self.p, mid)


@register_transform("expand")
class Expand(Transform):
    """ExpandNets-style linear expansion (stand-in for SNT's unpublished transformation).

    Every ``Linear`` is trained as W₂W₁ (n → rate·n → m), every ``Conv2d`` with groups 1 as 1×1 → k×k → 1×1
    with rate× the channels inside; ``fold`` contracts the product. Reference: ExpandNets (Guo, Alvarez &
    Salzmann, NeurIPS 2020, arXiv 1811.10495). ``rate`` 2 is CraftLab's default, for CPU cost (ExpandNets' own
    rate is reported as 4; not checked here). Under Adam the product moves faster than a plain weight: give it a
    lower lr (the SNT study uses a third of the recipe's, :data:`craftlab.studies.snt.EXPAND_LR_SCALE`).

    Example::

        wide = craftlab.transforms.get_transform("expand", rate=4).apply(model, seed=0)
    """

    reference = "ExpandNets: Guo, Alvarez & Salzmann, NeurIPS 2020, arXiv 1811.10495 (stand-in for SNT)"
    defaults = {"rate": 2}
    requirement = "Linear layers or Conv2d layers with groups 1"

    def check_params(self) -> None:
        check_number("expand rate", self.params["rate"], 1, integer=True)
        self.params["rate"] = int(self.params["rate"])

    def accepts(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)

    def parametrization(self, module: nn.Module, generator: torch.Generator) -> nn.Module:
        return ExpandedWeight(module.weight, self.params["rate"], isinstance(module, nn.Conv2d), generator)
