"""Activation quantizers and their calibration, for the ViT PTQ of :mod:`.vit_quant`.

Plumbing for :mod:`.vit_quant` (which documents the method and its sources). Here:

* ``uniform``: asymmetric ``clamp(round(x / s) + z, 0, 2^b - 1)``, dequantized ``(q - z) * s``, the grid of
  :func:`.quant.fake_quant`. Unlike :func:`.quant.qparams` the range is *not* widened to include 0
  (RepQ-ViT's ``UniformQuantizer``: ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``), so a channel
  whose values all sit away from 0 (a post-LayerNorm channel with a large β) keeps its full resolution.
* ``log2sqrt2`` (RepQ-ViT) and ``log2``: codes ``q = round(-k·log2(x / Δ))`` with k = 2 (levels
  ``Δ·2^(-q/2)``) or k = 1 (levels ``Δ·2^(-q)``), q clamped to ``[0, 2^b - 1]``; values whose code would
  be ``>= 2^b`` become exactly 0 (as in RepQ-ViT's code: 2^b levels plus an exact zero).
* ``twin-uniform`` (PTQ4ViT, post-softmax form): two uniform ranges of ``2^(b-1)`` codes each, the coarse
  one with step ``1 / (2^(b-1) - 1)`` over [0, 1] and the fine one with step ``split / (2^(b-1) - 1)``,
  ``split = 2^-m``; values below ``split`` use the fine range.

Calibration (:class:`Observer`): one pass over every calibration batch, keeping the exact running
min / max (per channel or per tensor) and a bounded uniform random sample of the values for the
percentile / MSE searches (a seeded local generator: the caller's RNG is untouched).
"""

from __future__ import annotations

import torch
from torch import nn

from .quant import fake_quant

SOFTMAX_QUANTIZERS = ("log2sqrt2", "log2", "uniform", "twin-uniform")
ACT_METHODS = ("repq", "minmax")
REPQ_PERCENTILES = (0.999, 0.9999, 0.99999)  # RepQ-ViT's candidates (uniform and log√2 quantizers)
TWIN_SPLITS = tuple(2.0**-m for m in range(20))  # PTQ4ViT's split candidates 2^-m, m = 0..19
_TINY = 1e-12


def uniform_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and (integer-valued) zero point of the asymmetric b-bit grid spanning [lo, hi] (not widened to 0)."""
    scale = (hi - lo).clamp_min(_TINY) / (2**bits - 1)
    return scale, torch.round(-lo / scale)


def uniform_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric uniform fake quantization on the codes ``0 .. 2^b - 1``."""
    return fake_quant(x, scale, zero_point, 0, 2**bits - 1)


def log_quant(x: torch.Tensor, delta: torch.Tensor, bits: int, sqrt2: bool = True) -> torch.Tensor:
    """log√2 (``sqrt2=True``, RepQ-ViT) or log2 fake quantization of non-negative `x` with top level `delta`."""
    k = 2.0 if sqrt2 else 1.0
    n = 2**bits
    code = torch.round(-k * torch.log2(x.clamp_min(0) / delta))  # x = 0 gives +inf: below the grid
    below = code >= n
    level = delta * torch.exp2(-code.clamp(0, n - 1) / k)
    return torch.where(below, torch.zeros_like(level), level)


def twin_uniform_quant(x: torch.Tensor, split: torch.Tensor, bits: int) -> torch.Tensor:
    """PTQ4ViT's twin-uniform quantizer for post-softmax values in [0, 1] (piecewise rule, see module doc)."""
    top = 2 ** (bits - 1) - 1
    fine, coarse = split / top, 1.0 / top
    lo = torch.clamp(torch.round(x / fine), 0, top) * fine
    hi = torch.clamp(torch.round(x / coarse), 0, top) * coarse
    return torch.where(x < split, lo, hi)


class Observer:
    """Exact running min/max and a bounded random sample of a tensor stream (one pass, every batch).

    ``channels=None``: per tensor (values flattened); ``channels=C``: per channel along the last dim
    (rows of C values are sampled whole).
    """

    def __init__(self, channels: int | None = None, max_values: int = 2**20, seed: int = 0):
        self.channels, self.max_values = channels, max_values
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self._parts: list[torch.Tensor] = []
        self._rows, self._keep = 0, 1.0
        self._gen = torch.Generator().manual_seed(seed)

    def _subset(self, rows: torch.Tensor, fraction: float) -> torch.Tensor:
        k = max(1, round(rows.shape[0] * fraction))
        if k >= rows.shape[0]:
            return rows
        idx = torch.randperm(rows.shape[0], generator=self._gen)[:k]
        return rows[idx.to(rows.device)]

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        rows = x.reshape(-1, self.channels) if self.channels else x.reshape(-1, 1)
        lo, hi = rows.amin(0), rows.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        keep = self._keep
        while keep * rows.shape[0] * rows.shape[1] > self.max_values:  # a big batch: sample it sparser
            keep /= 2
        if keep < self._keep:  # ... and everything kept before at the same rate
            self._parts = [self._subset(p, keep / self._keep) for p in self._parts]
            self._keep = keep
        part = self._subset(rows, keep)
        self._parts.append(part)
        self._rows = sum(p.shape[0] for p in self._parts)
        # over budget: thin what is kept, and later batches alike
        while self._rows * rows.shape[1] > self.max_values and self._rows > len(self._parts):
            self._keep /= 2
            self._parts = [self._subset(p, 0.5) for p in self._parts]
            self._rows = sum(p.shape[0] for p in self._parts)

    def sample(self) -> torch.Tensor:
        """The kept values: shape (n, C) per channel, (n,) per tensor."""
        if not self._parts:
            raise ValueError("the calibration pass never reached this quantizer (empty calibration set?)")
        s = torch.cat(self._parts)
        return s if self.channels else s.reshape(-1)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (min, max) over everything seen: shape (C,) per channel, () per tensor."""
        assert self.lo is not None and self.hi is not None
        return (self.lo, self.hi) if self.channels else (self.lo.reshape(()), self.hi.reshape(()))


def search_uniform_range(sample: torch.Tensor, bits: int, method: str,
                         exact: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of the uniform grid: per column of a 2-D `sample` (n, C), or of a 1-D sample.

    ``minmax``: the exact range (`exact`, else the sample's). ``repq``: RepQ-ViT's search, clip at the
    percentiles ``p`` / ``1 - p`` for p in (0.999, 0.9999, 0.99999) and keep, per channel, the pair with the
    smallest squared error on the sample.
    """
    if method == "minmax":
        return exact if exact is not None else (sample.amin(0), sample.amax(0))
    sample = sample.float()
    probs = torch.tensor([q for p in REPQ_PERCENTILES for q in (1 - p, p)], device=sample.device)
    quant = torch.quantile(sample, probs, dim=0)  # (2·P, C) or (2·P,)
    best_err, best_lo, best_hi = None, None, None
    for i in range(len(REPQ_PERCENTILES)):
        lo, hi = quant[2 * i], quant[2 * i + 1]
        scale, zp = uniform_qparams(lo, hi, bits)
        err = (uniform_quant(sample, scale, zp, bits) - sample).pow(2).mean(0)
        if best_err is None:
            best_err, best_lo, best_hi = err, lo, hi
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
    return best_lo, best_hi


def search_log_delta(sample: torch.Tensor, bits: int, sqrt2: bool) -> torch.Tensor:
    """RepQ-ViT's log√2 scale: Δ among the 0.999 / 0.9999 / 0.99999 quantiles with the smallest MSE."""
    sample = sample.float()
    cands = torch.quantile(sample, torch.tensor(REPQ_PERCENTILES, device=sample.device))
    errs = torch.stack([(log_quant(sample, d, bits, sqrt2) - sample).pow(2).mean() for d in cands])
    return cands[int(errs.argmin())].clamp_min(_TINY)


def search_twin_split(sample: torch.Tensor, bits: int) -> torch.Tensor:
    """Twin-uniform split 2^-m (m = 0..19) with the smallest squared error (PTQ4ViT uses a Hessian metric)."""
    sample = sample.float()
    cands = torch.tensor(TWIN_SPLITS, device=sample.device)
    errs = torch.stack([(twin_uniform_quant(sample, s, bits) - sample).pow(2).mean() for s in cands])
    return cands[int(errs.argmin())]


class ActQuantizer(nn.Module):
    """Per-tensor activation fake quantizer: ``uniform``, ``log2sqrt2``, ``log2`` or ``twin-uniform``.

    Buffers: ``scale`` (uniform: step; log: Δ, the top level; twin-uniform: the split) and ``zero_point``
    (uniform only). ``bits=None`` or ``enabled=False`` passes values through. While ``observer`` is set
    (calibration) it records its input and passes it through unchanged.

    Example::

        aq = ActQuantizer("log2sqrt2", 4)
        aq.observer = Observer()
        aq(torch.rand(8, 16).softmax(-1))       # calibration: records, returns the input
        aq.calibrate("repq")                    # now quantizes
    """

    def __init__(self, kind: str, bits: int | None):
        super().__init__()
        if kind not in SOFTMAX_QUANTIZERS:
            raise ValueError(f"unknown quantizer kind {kind!r} (choose from {', '.join(SOFTMAX_QUANTIZERS)})")
        self.kind, self.bits, self.enabled = kind, bits, True
        self.observer: Observer | None = None
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            return x
        if self.bits is None or not self.enabled:
            return x
        if self.kind == "uniform":
            return uniform_quant(x, self.scale, self.zero_point, self.bits)
        if self.kind == "twin-uniform":
            return twin_uniform_quant(x, self.scale, self.bits)
        return log_quant(x, self.scale, self.bits, sqrt2=self.kind == "log2sqrt2")

    @torch.no_grad()
    def calibrate(self, method: str = "repq") -> None:
        """Set the buffers from what the observer saw, and stop observing."""
        obs, self.observer = self.observer, None
        if obs is None or self.bits is None:
            return
        sample = obs.sample()
        if self.kind == "uniform":
            lo, hi = search_uniform_range(sample, self.bits, method, obs.range())
            scale, zp = uniform_qparams(lo, hi, self.bits)
        elif self.kind == "twin-uniform":
            scale, zp = search_twin_split(sample, self.bits), torch.zeros(())
        elif method == "minmax":
            scale, zp = obs.range()[1].clamp_min(_TINY), torch.zeros(())
        else:
            scale, zp = search_log_delta(sample, self.bits, sqrt2=self.kind == "log2sqrt2"), torch.zeros(())
        self.scale = scale.reshape(()).to(self.scale)
        self.zero_point = zp.reshape(()).to(self.zero_point)

    def extra_repr(self) -> str:
        return f"{self.kind}, bits={self.bits}"
