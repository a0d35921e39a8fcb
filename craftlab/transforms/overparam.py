"""Linear over-parameterization that folds back exactly: ExpandNets-style factors and RepVGG-style branches.

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
import torch.nn.functional as F
from torch import nn

from .base import Transform, check_number, register_transform


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
    lower lr (the SNT study uses a third of the recipe's, :data:`craftlab.train.pretrain_study.EXPAND_LR_SCALE`).

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


class RepBranches(nn.Module):
    """weight = K_kxk + pad(K_1x1) + diag(s) at the centre tap: RepVGG's three branches, BN-free."""

    def __init__(self, weight: torch.Tensor, identity: bool):
        super().__init__()
        out_ch, in_ch, k, _ = weight.shape
        self.pad = k // 2
        self.branch_1x1 = nn.Parameter(torch.zeros(out_ch, in_ch, 1, 1, dtype=weight.dtype, device=weight.device))
        self.identity = nn.Parameter(torch.zeros(out_ch, dtype=weight.dtype, device=weight.device)) \
            if identity else None

    def forward(self, kernel: torch.Tensor) -> torch.Tensor:
        w = kernel + F.pad(self.branch_1x1, [self.pad] * 4)
        if self.identity is None:
            return w
        idx = torch.arange(len(self.identity), device=w.device)
        centre = torch.full_like(idx, self.pad)
        return w.index_put((idx, idx, centre, centre), self.identity, accumulate=True)


def _rep_ok(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d) or m.groups != 1 or m.padding_mode != "zeros" or m.dilation != (1, 1):
        return False
    k = m.kernel_size
    if k[0] != k[1] or k[0] < 3 or k[0] % 2 == 0:
        return False
    return m.padding == (k[0] // 2, k[0] // 2) or (m.padding == "same" and m.stride == (1, 1))


@register_transform("repvgg")
class RepVGG(Transform):
    """RepVGG-style branches, BN-free (stand-in for SNT's unpublished transformation).

    Every k×k ``Conv2d`` (odd k >= 3, padding k//2, dilation 1, groups 1) is trained as a k×k kernel plus a
    1×1 branch plus, where in = out channels and stride 1, an identity branch with a learnable per-channel
    scale; ``fold`` adds the 1×1 kernel to the centre tap and the identity scales to the diagonal. Reference:
    RepVGG, arXiv 2101.03697; RepVGG's
    branches each carry a BatchNorm, these do not.
    """

    reference = "RepVGG, arXiv 2101.03697; branches BN-free here (stand-in for SNT)"
    defaults = {"identity": True}
    requirement = "Conv2d layers with an odd square kernel >= 3, padding k//2, dilation 1 and groups 1"

    def check_params(self) -> None:
        if not isinstance(self.params["identity"], bool):
            raise ValueError(f"repvgg identity must be True or False, got {self.params['identity']!r}")

    def accepts(self, module: nn.Module) -> bool:
        return _rep_ok(module)

    def parametrization(self, module: nn.Module, generator: torch.Generator) -> nn.Module:
        identity = self.params["identity"] and module.in_channels == module.out_channels and module.stride == (1, 1)
        return RepBranches(module.weight, identity)
