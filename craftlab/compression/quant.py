"""Post-training quantization by fake quantization (round to the integer grid and back).

``quantize_tensor`` is the primitive. ``quantize`` returns a new model whose targeted Conv2d/Linear
layers are replaced by :class:`QuantConv2d` / :class:`QuantLinear` (subclasses, same names and
parameters): their ``weight`` holds the fake-quantized weights (per output channel by default) and,
with ``a_bits``, their input is fake-quantized with a scale calibrated on ``calib``.

Grids: symmetric ``q ∈ [-2^(b-1), 2^(b-1)-1]``, zero point 0, scale = range / (2^(b-1)-1);
asymmetric ``q ∈ [0, 2^b-1]`` with the range widened to include 0. This is the convention of
``torch.fake_quantize_per_channel_affine`` (``x * (1/scale)``, round half to even, clamp).
Range estimators: ``minmax``; ``percentile`` (clip at the given percentile of the values);
``mse`` (clip ratio in (0, 1] minimising the squared error, searched over a grid).

Activation ranges use every calibration batch: min/max are exact running statistics; percentile and
MSE read a uniform random subsample of at most 2**20 values per layer drawn across all batches (a
seeded bottom-k reservoir, :class:`._calib.RangeObserver`), with MSE's clip ratios applied to the
exact running range. The scale is floored at the smallest normal number of the tensor's dtype (its
reciprocal is finite), so an all-zero channel quantizes to zeros in fp16/bf16 too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import unknown_name
from ..measure.bitops import bitops, forward_macs
from ..measure.size import model_size
from ..settings import GRANULARITIES, parse_bits, range_methods
from ._calib import RangeObserver, for_each_layer_input
from .prune import Targets, target_layers

METHODS = range_methods("uniform")
"""The range methods of recipe ``uniform`` (its module, :mod:`craftlab.compression.recipes.uniform`, says them)."""
CALIB_SAMPLE_VALUES = 2**20
"""Per layer: the most activation values kept for percentile/MSE calibration (a uniform subsample)."""


def _int_bits(bits: object) -> int:
    b = parse_bits(bits)
    if b is None:
        raise ValueError("bits must be one of 2..8 or 16 here, got None (float)")
    return b


def scale_floor(dtype: torch.dtype) -> float:
    """Smallest scale used for `dtype`: its smallest normal number (1/that is finite in every float format)."""
    return torch.finfo(dtype).tiny if dtype.is_floating_point else torch.finfo(torch.float32).tiny


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of a b-bit integer grid."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def _reduce_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    return [d for d in range(x.ndim) if axis is None or d != axis % x.ndim]


def _range(x: torch.Tensor, axis: int | None, method: str, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of x per channel along `axis` (or over the whole tensor)."""
    dims = _reduce_dims(x, axis)
    if method == "percentile":
        flat = x.movedim(axis, 0).reshape(x.shape[axis], -1) if axis is not None else x.reshape(1, -1)
        q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=flat.dtype, device=flat.device)
        if flat.shape[1] > 2**24:  # torch.quantile's size limit: use an evenly spaced subsample
            flat = flat[:, :: flat.shape[1] // 2**23 + 1]
        lo, hi = torch.quantile(flat.float(), q.float(), dim=1).to(x.dtype)
        shape = [1] * x.ndim
        if axis is not None:
            shape[axis % x.ndim] = -1
        return lo.view(shape), hi.view(shape)
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


def _qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    qmin, qmax = grid(bits, symmetric)
    tiny = scale_floor(lo.dtype)  # floored after the division: a float32 floor underflows to 0 in fp16
    if symmetric:
        scale = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(tiny)
        zero_point = torch.zeros_like(scale)
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(tiny)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with broadcastable scale/zero point."""
    inv = 1.0 / scale
    return (torch.clamp(torch.round(x * inv) + zero_point, qmin, qmax) - zero_point) * scale


def qparams(x: torch.Tensor, bits: int, axis: int | None = None, symmetric: bool = True,
            method: str = "minmax", percentile: float = 99.99,
            mse_grid: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for `x` (shapes broadcastable to x: per channel along `axis`, or scalar-like)."""
    bits = _int_bits(bits)
    if method not in METHODS:
        raise unknown_name("range method", method, METHODS)
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    x = x.detach()
    lo, hi = _range(x, axis, method, percentile)
    if method == "mse":
        return _mse_search(x, axis, lo, hi, bits, symmetric, mse_grid)
    return _qparams_from_range(lo, hi, bits, symmetric)


def _mse_search(x: torch.Tensor, axis: int | None, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                symmetric: bool, mse_grid: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip ratio r of (lo, hi) in (0, 1] whose grid gives the least squared error on `x` (per channel)."""
    qmin, qmax = grid(bits, symmetric)
    dims = _reduce_dims(x, axis)
    scale, zp = _qparams_from_range(lo, hi, bits, symmetric)
    best = torch.full_like(scale, float("inf"))
    for r in torch.linspace(1.0 / mse_grid, 1.0, mse_grid).tolist():
        s, z = _qparams_from_range(lo * r, hi * r, bits, symmetric)
        err = (fake_quant(x, s, z, qmin, qmax) - x).pow(2).sum(dim=dims, keepdim=True)
        better = err < best
        best = torch.where(better, err, best)
        scale, zp = torch.where(better, s, scale), torch.where(better, z, zp)
    return scale, zp


def quantize_tensor(x: torch.Tensor, bits: int, axis: int | None = None, symmetric: bool = True,
                    method: str = "minmax", percentile: float = 99.99) -> torch.Tensor:
    """Fake-quantize `x` to a `bits`-bit grid (per channel along `axis`, per tensor if None); same shape/dtype.

    Example::

        >>> import torch
        >>> quantize_tensor(torch.tensor([-1.0, -0.3, 0.2, 1.0]), bits=2).tolist()
        [-1.0, 0.0, 0.0, 1.0]
    """
    bits = _int_bits(bits)
    scale, zp = qparams(x, bits, axis, symmetric, method, percentile)
    qmin, qmax = grid(bits, symmetric)
    return fake_quant(x.detach(), scale, zp, qmin, qmax)


class _QuantMixin:
    """Shared state of quantized layers: bits, and the activation grid (buffers a_scale, a_zero_point)."""

    w_bits: int | None
    a_bits: int | None

    def _init_quant(self, w_bits, a_bits, a_symmetric):
        self.w_bits, self.a_bits, self.a_symmetric = w_bits, a_bits, a_symmetric
        self.register_buffer("a_scale", torch.ones(()))
        self.register_buffer("a_zero_point", torch.zeros(()))

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits is None:
            return x
        qmin, qmax = grid(self.a_bits, self.a_symmetric)
        scale, zp = self.a_scale, self.a_zero_point
        if x.is_floating_point():  # the grid in the input's dtype, with a scale that does not underflow in it
            scale, zp = scale.to(x.dtype).clamp_min(scale_floor(x.dtype)), zp.to(x.dtype)
        return fake_quant(x, scale, zp, qmin, qmax)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self.w_bits}, a_bits={self.a_bits}"


class QuantLinear(_QuantMixin, nn.Linear):
    """nn.Linear with fake-quantized weight (stored in ``weight``) and optionally quantized input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self.weight, self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d with fake-quantized weight (stored in ``weight``) and optionally quantized input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quant_input(x), self.weight, self.bias)


def _swap(parent: nn.Module, child_name: str, old: nn.Module, w_bits, a_bits, a_symmetric) -> nn.Module:
    cls = QuantConv2d if isinstance(old, nn.Conv2d) else QuantLinear
    new = copy.copy(old)  # shares parameters/buffers dicts' values; re-class and re-register below
    new.__class__ = cls
    new._parameters = dict(old._parameters)
    new._buffers = dict(old._buffers)
    new._init_quant(w_bits, a_bits, a_symmetric)
    setattr(parent, child_name, new)
    return new


def check_quant_args(w_bits: Any, a_bits: Any, w_granularity: str, a_granularity: str, method: str,
                     a_method: str | None, calib: Any) -> tuple[int | None, int | None]:
    """Validate :func:`quantize`'s arguments before any work; returns the parsed (w_bits, a_bits)."""
    w_bits = parse_bits(w_bits, "w_bits")
    a_bits = parse_bits(a_bits, "a_bits")
    for name, value, allowed in (("w_granularity", w_granularity, GRANULARITIES),
                                 ("a_granularity", a_granularity, GRANULARITIES),
                                 ("method", method, METHODS), ("a_method", a_method or method, METHODS)):
        if value not in allowed:
            raise unknown_name(name, value, allowed)
    if a_bits is not None and calib is None:
        raise ValueError("a_bits needs calibration data to set activation ranges: pass calib=<DataLoader or batches>")
    return w_bits, a_bits


def quantize(
    model: nn.Module,
    w_bits: int | None = 8,
    a_bits: int | None = None,
    w_granularity: str = "channel",
    a_granularity: str = "tensor",
    method: str = "minmax",
    a_method: str | None = None,
    calib: Iterable[Any] | None = None,
    targets: Targets = None,
    w_symmetric: bool = True,
    a_symmetric: bool = False,
    percentile: float = 99.99,
    calib_samples: int | None = None,
) -> nn.Module:
    """Return a post-training-quantized copy of `model` (fake quantization).

    Args:
        w_bits: weight bits (2-8 or 16; None keeps float weights).
        a_bits: bits of the targeted layers' inputs (None = float); needs `calib`.
        w_granularity: ``channel`` (per output channel) or ``tensor``.
        a_granularity: ``tensor`` or ``channel`` (per input feature / channel).
        method: range estimator for weights (``minmax``, ``percentile``, ``mse``);
            `a_method` for activations (default: the same).
        calib: calibration batches (DataLoader or iterable of (x, y) / tensors) for activation ranges.
        targets: layers to quantize (default: all Conv2d/Linear but stem and head; ``"all"`` for every one).
    """
    w_bits, a_bits = check_quant_args(w_bits, a_bits, w_granularity, a_granularity, method, a_method, calib)
    a_method = a_method or method
    qmodel = copy.deepcopy(model)
    layers = target_layers(qmodel, targets)
    if not layers:
        raise ValueError("no layers to quantize: targets selected no Conv2d/Linear module")

    ranges: dict[str, Any] = {}
    if a_bits is not None:
        ranges = _calibrate(qmodel, layers, calib, a_bits, a_granularity, a_symmetric, a_method, percentile,
                            calib_samples)
    named = dict(qmodel.named_modules())
    for name, mod in layers.items():
        parent_name, _, child = name.rpartition(".")
        new = _swap(named[parent_name] if parent_name else qmodel, child, mod, w_bits, a_bits, a_symmetric)
        if w_bits is not None:
            with torch.no_grad():
                new.weight.copy_(quantize_tensor(new.weight, w_bits, axis=0 if w_granularity == "channel" else None,
                                                 symmetric=w_symmetric, method=method, percentile=percentile))
        if a_bits is not None:
            scale, zp = ranges[name]
            new.a_scale, new.a_zero_point = scale, zp
    info = {"w_bits": w_bits, "a_bits": a_bits, "w_granularity": w_granularity, "a_granularity": a_granularity,
            "method": method, "a_method": a_method, "layers": list(layers)}
    qmodel.craftlab_compression = {**getattr(model, "craftlab_compression", {}), "quant": info}
    return qmodel


@torch.no_grad()
def _calibrate(model, layers, calib, bits, granularity, symmetric, method, percentile, calib_samples,
               sample_values: int = CALIB_SAMPLE_VALUES, seed: int = 0):
    """Observe each layer's inputs on the float model over ALL calibration batches; name -> (scale, zero_point).

    Min-max uses the exact running range; percentile/MSE a uniform subsample of `sample_values` values
    per layer (see :class:`._calib.RangeObserver`), MSE clipping the exact range.
    """
    per_channel = granularity == "channel"
    observers = {n: RangeObserver(per_channel, 0 if method == "minmax" else sample_values, seed=seed) for n in layers}
    for_each_layer_input(model, layers, calib, lambda name, rows: observers[name].update(rows),
                         limit=calib_samples, purpose="activation quantization")
    out = {}
    for name, mod in layers.items():
        obs = observers[name]
        if obs.lo is None:
            raise ValueError(f"layer {name!r} never ran on the calibration images: cannot set its activation range")
        axis = 1 if per_channel else None
        lo, hi = (obs.lo[None, :], obs.hi[None, :]) if per_channel else (obs.lo.reshape(1, 1), obs.hi.reshape(1, 1))
        if method == "minmax":
            scale, zp = _qparams_from_range(lo, hi, bits, symmetric)
        elif method == "percentile":
            scale, zp = _qparams_from_range(*_range(obs.sample, axis, method, percentile), bits, symmetric)
        else:
            scale, zp = _mse_search(obs.sample, axis, lo.to(obs.sample.device), hi.to(obs.sample.device), bits,
                                    symmetric)
        if per_channel:
            shape = (1, -1, 1, 1) if isinstance(mod, nn.Conv2d) else (-1,)
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        else:
            scale, zp = scale.reshape(()), zp.reshape(())
        dev = mod.weight.device
        out[name] = (scale.to(dev), zp.to(dev))
    return out


def model_stats(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, float]:
    """Size and compute of a (possibly quantized / pruned) model.

    Returns ``params``, ``nonzero_params``, ``size_bits`` (quantized layers' weights at w_bits, every
    other parameter at 32 bits), ``size_mb`` (size_bits / 8 / 2**20), and with `example_input` (one
    image, shape (1, C, H, W) or (C, H, W)): ``macs`` of the Conv2d/Linear layers (attention matmuls
    are not counted) and ``bitops`` = Σ MACs · w_bits · a_bits (32 for float). Each quantity is defined once in
    :mod:`craftlab.measure` (``size.model_size``, ``bitops.forward_macs`` / ``bitops.bitops``).

    Example::

        craftlab.model_stats(craftlab.quantize(model, w_bits=4, a_bits=8, calib=data.calib))
        # {'size_mb': ..., 'bitops': ..., 'params': ..., 'sparsity': ...}
    """
    weight_bits = {f"{name}.weight" if name else "weight": mod.w_bits for name, mod in model.named_modules()
                   if isinstance(mod, _QuantMixin) and mod.w_bits is not None}
    stats = model_size(model, weight_bits)
    if example_input is not None:
        x = example_input if example_input.ndim == 4 else example_input[None]
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        macs = forward_macs(model, x, layers=layers)
        stats.update(macs=sum(macs.values()),
                     bitops=sum(bitops(n, getattr(m, "w_bits", None), getattr(m, "a_bits", None))
                                for m, n in macs.items()))
    return stats
