"""The small networks that train on a frozen backbone's features: LAST's side network, MIET's adaptor, a probe.

RECONSTRUCTION. Neither paper publishes code; what is documented (abstracts and reviews) is: LAST's side network
is m low-rank self-attention (LSA) modules, no FFN, one every g backbone blocks; LSA "projects tokens to a very
low dimension r (r ≪ d), performs self-attention in this reduced space, and projects back"; side block i reads
the previous side output u_{i−1} and the backbone's z_i; the output is "bias-corrected" as u_m − Σ_{i<m} z_i.
MIET's device trains "a lightweight low-rank attention adaptor" on Gather* = Σ_{i≤k} z_i. Not published and
chosen here (each in one place, easy to change):

- inside LSA (:class:`LowRankSelfAttention`): pre-LayerNorm, one d→r projection, separate q/k/v maps r→r,
  ``heads`` heads in the r dims, softmax attention, one r→d projection initialised to zero (so a fresh side
  network adds nothing: LAST starts as the linear probe on the backbone's final features);
- LAST's recurrence (:meth:`LASTSideNet.forward`): ``u_0 = z_0``, ``u_i = h_i + F_i(h_i)`` with
  ``h_i = u_{i−1} + z_i``, output ``u_m − Σ_{i<m} z_i = z_m + Σ_i F_i(h_i)``; F_i is ``layers`` residual LSA
  layers (1 by default); then a LayerNorm (initialised from the backbone's final norm when given), the CLS token
  (or the mean token) and a linear head;
- MIET's adaptor (:class:`GatherAdaptor`): ``x + LSA(x)`` on Gather*, LayerNorm, pool, linear head.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

POOLS = ("cls", "mean")


def check_rank(rank: object, dim: int, heads: object = 1) -> int:
    """A low rank for width `dim`: an integer 1 ≤ r < d, divisible by `heads` (a positive integer)."""
    if not isinstance(heads, numbers.Integral) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"heads must be a positive integer, got {heads!r}")
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if rank >= dim:
        raise ValueError(f"rank r = {rank} must be below the feature width d = {dim}: r ≥ d is not a low-rank "
                         "projection (try r = d/8 to d/16)")
    if rank % heads:
        raise ValueError(f"rank r = {rank} must be divisible by heads = {heads}")
    return int(rank)


def _check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    return pool


class LowRankSelfAttention(nn.Module):
    """LSA: ``x ↦ W_up · Attn_r(W_down · LN(x))``, multi-head self-attention in r ≪ d dimensions, no FFN.

    Input and output (B, N, d). ``up`` starts at zero, so a fresh LSA outputs zeros.

    >>> LowRankSelfAttention(64, 8)(torch.randn(2, 17, 64)).shape
    torch.Size([2, 17, 64])
    """

    def __init__(self, dim: int, rank: int, heads: int = 1):
        super().__init__()
        self.rank, self.heads = check_rank(rank, dim, heads), int(heads)
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, rank)
        self.qkv = nn.Linear(rank, 3 * rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        hd = self.rank // self.heads
        q, k, v = self.qkv(self.down(self.norm(x))).reshape(B, N, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd)), dim=-1)
        return self.up((attn @ v).transpose(1, 2).reshape(B, N, self.rank))


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    return x[:, 0] if pool == "cls" else x.mean(1)


class LASTSideNet(nn.Module):
    """LAST's side network on z_0 … z_m (input (B, m+1, N, d)): m side blocks, the output correction, a head.

    Args:
        dim: the backbone's width d. num_classes: classes of the head. m: number of side blocks (= L / g).
        rank, heads: of every LSA module. layers: LSA layers per side block (T in the paper's F_i).
        pool: ``"cls"`` (token 0, for backbones with a class token) or ``"mean"`` over tokens.
        norm: the final LayerNorm's state to start from (the backbone's ``norm``), or None.

    >>> net = LASTSideNet(64, 10, m=2, rank=8)
    >>> net(torch.randn(5, 3, 17, 64)).shape
    torch.Size([5, 10])
    """

    def __init__(self, dim: int, num_classes: int, m: int, rank: int = 8, heads: int = 1, layers: int = 1,
                 pool: str = "cls", norm: dict[str, torch.Tensor] | None = None):
        super().__init__()
        if not isinstance(m, numbers.Integral) or m < 1:
            raise ValueError(f"the side network needs m >= 1 side blocks, got {m!r}")
        if not isinstance(layers, numbers.Integral) or layers < 1:
            raise ValueError(f"layers (LSA layers per side block) must be a positive integer, got {layers!r}")
        self.m, self.pool = int(m), _check_pool(pool)
        self.blocks = nn.ModuleList(nn.ModuleList(LowRankSelfAttention(dim, rank, heads) for _ in range(layers))
                                    for _ in range(m))
        self.norm = nn.LayerNorm(dim)
        if norm is not None:
            self.norm.load_state_dict(norm)
        self.head = nn.Linear(dim, num_classes)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """The corrected side output u_m − Σ_{i<m} z_i, shape (B, N, d)."""
        u = z[:, 0]
        for i, block in enumerate(self.blocks, start=1):
            h = u + z[:, i]
            s = h
            for lsa in block:  # F_i(h) = (residual stack of LSA layers)(h) − h
                s = s + lsa(s)
            u = s  # = h + F_i(h)
        return u - z[:, : self.m].sum(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(_pool(self.norm(self.features(z)), self.pool))


class GatherAdaptor(nn.Module):
    """MIET's device-side network on Gather* (input (B, N, d)): ``x + LSA(x)``, LayerNorm, pool, linear head.

    >>> GatherAdaptor(64, 10, rank=8)(torch.randn(5, 17, 64)).shape
    torch.Size([5, 10])
    """

    def __init__(self, dim: int, num_classes: int, rank: int = 8, heads: int = 1, pool: str = "cls"):
        super().__init__()
        self.pool = _check_pool(pool)
        self.lsa = LowRankSelfAttention(dim, rank, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_pool(self.norm(x + self.lsa(x)), self.pool))


class LinearProbe(nn.Module):
    """A linear classifier on the backbone's pre-logits feature (input (B, d)).

    >>> LinearProbe(64, 10)(torch.randn(5, 64)).shape
    torch.Size([5, 10])
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def trainable_parameters(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
