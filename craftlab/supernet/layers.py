"""Switchable-precision fake-quant layers: one Linear / Conv2d that runs at any (w_bits, a_bits) of a candidate set.

Each layer keeps one learnable step size per candidate bit-width (LSQ, Esser et al. 2020): per output channel
for the weights, per tensor for the layer input. Both grids are symmetric and signed
(``q ∈ [-2^(b-1), 2^(b-1)-1]``, zero point 0), so a configured layer is exactly a
:class:`craftlab.compression.quant.QuantLinear` with ``a_symmetric=True``, the weight stored fake-quantized.

Forward: ``fake_quant(x, s)`` of :mod:`craftlab.compression.quant` (``clamp(round(x·(1/s)), qmin, qmax)·s``), so an
exported layer gives bit-identical outputs. Backward: LSQ's straight-through estimator, the input gradient
passed inside the grid's range and zeroed outside, the step's gradient ``round(v) - v`` inside and ``qmin``/``qmax``
at the clamps (v = x/s), scaled by ``g = 1/sqrt(N·qmax)`` (N: values per step of one example).

Reconstruction choices (LSQ's paper uses SGD and a raw step): steps are stored as ``log s`` so that Adam's
updates are relative and the step stays positive; they are initialized from craftlab's MSE range search
(``quant.qparams(method="mse")``) instead of LSQ's ``2·mean|v|/sqrt(qmax)``.

``rows`` / ``cols`` select the active output rows (an index or a slice) and the first ``cols`` inputs, which is how
the supernet's width operators (MLP hidden units, attention heads) run without copying weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..compression.quant import fake_quant, grid, qparams, scale_floor


class _LSQ(torch.autograd.Function):
    """Fake quantization with LSQ's gradients (forward == quant.fake_quant with zero point 0)."""

    @staticmethod
    def forward(ctx, x, step, qmin, qmax, grad_scale):
        ctx.save_for_backward(x, step)
        ctx.q = (qmin, qmax, grad_scale)
        return fake_quant(x, step, torch.zeros((), dtype=x.dtype, device=x.device), qmin, qmax)

    @staticmethod
    def backward(ctx, g):
        x, step = ctx.saved_tensors
        qmin, qmax, grad_scale = ctx.q
        v = x * (1.0 / step)
        vc = v.clamp(qmin, qmax)
        inside = vc == v  # strictly inside the grid's range, up to the measure-zero boundary itself
        gx = g * inside if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:  # round(v) - v inside, qmin / qmax at the clamps
            gs = (g * torch.where(inside, torch.round(vc) - vc, vc)).sum_to_size(step.shape) * grad_scale
        return gx, gs, None, None, None


class _WeightLSQ(torch.autograd.Function):
    """``LSQ(select(W + Σ s·B·A), step)`` without keeping ``W + Σ s·B·A`` for backward: only the leaves (W, the
    LoRA factors, the step) are saved and the sum is recomputed in backward (forward == :class:`_LSQ` of it,
    gradients equal those of the plain autograd path)."""

    @staticmethod
    def forward(ctx, weight, step, qmin, qmax, grad_scale, select, scalings, *factors):
        w = select(_lora_sum(weight, scalings, factors))
        ctx.save_for_backward(weight, step, *factors)
        ctx.q, ctx.select, ctx.scalings = (qmin, qmax, grad_scale), select, scalings
        return fake_quant(w, step, torch.zeros((), dtype=w.dtype, device=w.device), qmin, qmax)

    @staticmethod
    def backward(ctx, g):
        weight, step, *factors = ctx.saved_tensors
        qmin, qmax, grad_scale = ctx.q
        need = ctx.needs_input_grad
        leaves = [t.detach().requires_grad_(bool(n)) for t, n in zip([weight, *factors], [need[0], *need[7:]])]
        with torch.enable_grad():
            w = ctx.select(_lora_sum(leaves[0], ctx.scalings, leaves[1:]))
        v = w.detach() * (1.0 / step)
        vc = v.clamp(qmin, qmax)
        inside = vc == v
        gs = None
        if need[1]:
            gs = (g * torch.where(inside, torch.round(vc) - vc, vc)).sum_to_size(step.shape) * grad_scale
        wanted = [t for t in leaves if t.requires_grad]
        got = iter(torch.autograd.grad(w, wanted, g * inside) if wanted else [])
        grads = [next(got) if t.requires_grad else None for t in leaves]
        return (grads[0], gs, None, None, None, None, None, *grads[1:])


def _lora_delta(scalings: tuple[float, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """``Σ s·(B @ A)`` (factors: A1, B1, A2, B2, ...) in the order of the LoRA wrapper's ``delta``; None if none."""
    out = None
    for s, a, b in zip(scalings, factors[0::2], factors[1::2]):
        d = (b @ a) * s
        out = d if out is None else out + d
    return out


def _lora_sum(weight: torch.Tensor, scalings: tuple[float, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    delta = _lora_delta(scalings, factors)
    return weight if delta is None else weight + delta


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, bits: int, per_example: int) -> torch.Tensor:
    """Fake-quantize `x` on a signed `bits`-bit grid of step `step` (broadcastable), LSQ gradients.

    `per_example`: how many values of one example share a step (for LSQ's gradient scale).
    """
    qmin, qmax = grid(bits, symmetric=True)
    return _LSQ.apply(x, step, qmin, qmax, 1.0 / math.sqrt(max(per_example, 1) * qmax))


class _Switchable:
    """Shared state: candidate bits, current bits, log step sizes per candidate."""

    w_bits: int | None
    a_bits: int | None

    def _init_switch(self, w_candidates, a_candidates):
        self.w_candidates, self.a_candidates = tuple(w_candidates), tuple(a_candidates)
        self.w_bits, self.a_bits = max(self.w_candidates), max(self.a_candidates)
        shape = (self.weight.shape[0],) + (1,) * (self.weight.ndim - 1)
        dev = self.weight.device
        self.w_log_step = nn.ParameterDict({str(b): nn.Parameter(torch.zeros(shape, device=dev))
                                            for b in self.w_candidates})
        self.a_log_step = nn.ParameterDict({str(b): nn.Parameter(torch.zeros((), device=dev))
                                            for b in self.a_candidates})
        self.rows: slice | torch.Tensor | None = None
        self.cols: int | None = None

    def step_parameters(self) -> list[nn.Parameter]:
        return [*self.w_log_step.values(), *self.a_log_step.values()]

    @torch.no_grad()
    def init_weight_steps(self, method: str = "mse") -> None:
        """Per-output-channel step of every candidate from the current weights (craftlab's range search)."""
        w = self.weight.detach().flatten(1)
        for b in self.w_candidates:
            scale, _ = qparams(w, b, axis=0, symmetric=True, method=method)
            self.w_log_step[str(b)].copy_(scale.clamp_min(1e-12).log().view_as(self.w_log_step[str(b)]))

    @torch.no_grad()
    def init_act_steps(self, sample: torch.Tensor, method: str = "mse") -> None:
        """Per-tensor input step of every candidate from a sample of this layer's inputs."""
        for b in self.a_candidates:
            scale, _ = qparams(sample.detach().float().flatten(), b, axis=None, symmetric=True, method=method)
            self.a_log_step[str(b)].copy_(scale.clamp_min(1e-12).log().reshape(()))

    def weight_step(self, bits: int) -> torch.Tensor:
        return self.w_log_step[str(bits)].exp().clamp_min(scale_floor(self.weight.dtype))

    def act_step(self, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.a_log_step[str(bits)].exp().to(dtype).clamp_min(scale_floor(dtype))

    def active_weight(self, delta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight + delta, bias) restricted to the active rows/cols, not quantized."""
        w = self.weight if delta is None else self.weight + delta
        b = self.bias
        if self.rows is not None:
            w = w[self.rows]
            b = b[self.rows] if b is not None else None
        if self.cols is not None:
            w = w[:, : self.cols]
        return w, b

    def _select(self, w: torch.Tensor) -> torch.Tensor:
        if self.rows is not None:
            w = w[self.rows]
        return w[:, : self.cols] if self.cols is not None else w

    def lora_quantized_weight(self, lora: list[tuple[torch.Tensor, torch.Tensor, float]]
                              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(fake-quantized active ``W + Σ s·B·A``, active bias) from LoRA factors ``[(A, B, s), ...]``, keeping no
        weight-sized sum for backward (:class:`_WeightLSQ`); equal to ``quantized_weight(Σ s·B·A)``."""
        if self.w_bits is None or not torch.is_grad_enabled():
            return self.quantized_weight(_lora_delta(tuple(s for *_, s in lora),
                                                     tuple(t for a, b, _ in lora for t in (a, b))))
        b = self.bias[self.rows] if self.bias is not None and self.rows is not None else self.bias
        step = self.weight_step(self.w_bits)
        if self.rows is not None:
            step = step[self.rows]
        qmin, qmax = grid(self.w_bits, symmetric=True)
        per_example = self.weight[0].numel() if self.cols is None else self.weight[0, : self.cols].numel()
        factors = tuple(t for a, bb, _ in lora for t in (a, bb))
        w = _WeightLSQ.apply(self.weight, step, qmin, qmax, 1.0 / math.sqrt(max(per_example, 1) * qmax),
                             self._select, tuple(s for *_, s in lora), *factors)
        return w, b

    def quantized_weight(self, delta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(fake-quantized active weight at the current w_bits, active bias): what the layer multiplies by."""
        w, b = self.active_weight(delta)
        if self.w_bits is None:
            return w, b
        step = self.weight_step(self.w_bits)
        if self.rows is not None:
            step = step[self.rows]
        return lsq_quantize(w, step, self.w_bits, w[0].numel()), b

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits is None:
            return x
        return lsq_quantize(x, self.act_step(self.a_bits, x.dtype), self.a_bits, x[0].numel())

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", w_bits={self.w_bits}, a_bits={self.a_bits}, "
                f"candidates=W{self.w_candidates}xA{self.a_candidates}")


class SwitchableQuantLinear(_Switchable, nn.Linear):
    """nn.Linear at a switchable (w_bits, a_bits); ``forward(x, delta)`` quantizes ``weight + delta`` (LoRA)."""

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None,
                lora: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None) -> torch.Tensor:
        w, b = self.lora_quantized_weight(lora) if lora is not None else self.quantized_weight(delta)
        return F.linear(self.quantize_input(x), w, b)


class SwitchableQuantConv2d(_Switchable, nn.Conv2d):
    """nn.Conv2d at a switchable (w_bits, a_bits) (no width operator)."""

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        w, b = self.quantized_weight(delta)
        return self._conv_forward(self.quantize_input(x), w, b)


def make_switchable(layer: nn.Module, w_candidates: Any, a_candidates: Any) -> nn.Module:
    """A switchable copy of an nn.Linear / nn.Conv2d that shares its weight and bias tensors."""
    if isinstance(layer, nn.Linear):
        new = SwitchableQuantLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                    device="meta")
    elif isinstance(layer, nn.Conv2d):
        new = SwitchableQuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                    layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                                    layer.padding_mode, device="meta")
    else:
        raise TypeError(f"only nn.Linear and nn.Conv2d layers can be made switchable, got {type(layer).__name__}")
    new.weight = layer.weight
    new.bias = layer.bias
    new._init_switch(w_candidates, a_candidates)
    return new
