"""RepVGG-style branches that fold back exactly: a stand-in for SNT's unpublished transformation (see
:mod:`craftlab.transforms.expand` for why over-parameterizations stand in for it, and the choices both share).

``repvgg`` (RepVGG, arXiv 2101.03697): a k×k ``Conv2d`` (odd k, padding k//2, groups 1) is trained as k×k + 1×1 +
identity branches (identity only when in = out channels and stride 1), whose kernels add up. RepVGG puts a
BatchNorm in every branch; here the branches are BN-free (the network's own normalization follows the sum), so
folding is a plain kernel sum. CraftLab's choices: the sum is a parametrization of the weight (computed once per
step), and ``apply`` starts the extra branches at zero, so training starts from the model's current function
(RepVGG initialises its layers afresh).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import Transform, register_transform


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
