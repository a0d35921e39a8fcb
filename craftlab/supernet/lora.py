"""LoRA on the switchable layers through Hugging Face ``peft``: shared by all bit-widths, or one per bit-width.

peft wraps each :class:`~craftlab.supernet.layers.SwitchableQuantLinear` (an nn.Linear subclass) in
:class:`QuantLoraLinear`, a subclass of peft's LoRA ``Linear`` registered through ``LoraConfig``'s custom-module
mapping. Its forward puts the low-rank update *inside* the quantizer: ``y = Q_a(x) · Q_w(W + s·B·A)ᵀ + b``, through a
custom autograd function that saves only W, A, B and the step and recomputes ``W + s·B·A`` in backward (no second
weight-sized tensor held by the graph; :class:`craftlab.supernet.layers._WeightLSQ`).
So the trained adapters are quantization-aware, merging ``W + s·B·A`` and re-quantizing (what an export does)
gives exactly the supernet's output, and the deployed subnet is a plain quantized layer with no float side path.
(peft's stock LoRA adds ``s·B·A·x`` beside the base layer in float: unmerged it is not a quantized model, and
merging then re-quantizing changes the output.)

Modes:

* ``shared``: one adapter (``"shared"``) used at every bit-width;
* ``per-bit``: one adapter per candidate weight bit-width (``"w2"``, ``"w4"``, ...); each layer uses the adapter
  of its *current* weight bits, so subnets of different precision do not fight over one set of LoRA weights
  (our reconstruction of the paper's "multiplex" LoRA, whose exact design is not published).

Adapters are zero-initialized on B (peft's default), so a fresh supernet computes exactly its base model.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from ..models import SeededRNG
from .layers import SwitchableQuantLinear
from .space import LORA_MODES


def adapter_name(w_bits: int) -> str:
    """Name of the per-bit adapter of a weight bit-width: ``w4``."""
    return f"w{w_bits}"


class QuantLoraLinear(PeftLoraLinear):
    """peft LoRA around a switchable fake-quant Linear: the adapter update is quantized with the weight."""

    craftlab_lora_mode: str = "shared"

    def adapters_in_use(self) -> list[str]:
        """The adapter(s) this forward uses: per-bit mode picks the one of the layer's current weight bits."""
        if self.disable_adapters or self.merged:
            return []
        if self.craftlab_lora_mode == "per-bit":
            name = adapter_name(self.get_base_layer().w_bits)
            return [name] if name in self.lora_A else []
        return [n for n in self.active_adapters if n in self.lora_A]

    def delta(self) -> torch.Tensor | None:
        """``Σ s·B·A`` over the adapters in use (shape of the base weight), or None."""
        out = None
        for name in self.adapters_in_use():
            d = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
            out = d if out is None else out + d
        return out

    def factors(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """``[(A, B, s), ...]`` of the adapters in use (what :meth:`delta` sums)."""
        return [(self.lora_A[n].weight, self.lora_B[n].weight, self.scaling[n]) for n in self.adapters_in_use()]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # the factors, not W + s·B·A: the quantizer recomputes the sum in backward instead of keeping a copy
        return self.get_base_layer()(x, lora=self.factors())


def add_lora(net: nn.Module, layer_names: list[str], mode: str, w_candidates: tuple[int, ...], rank: int = 4,
             alpha: float | None = None, seed: int = 0) -> dict[str, QuantLoraLinear]:
    """Inject LoRA (in place) on the named switchable layers of `net`; returns name -> peft wrapper.

    `alpha` defaults to `rank` (scaling 1). A's initialization is drawn from a seeded private stream.
    """
    if mode not in LORA_MODES:
        raise ValueError(f"lora must be one of {LORA_MODES} or None (full-weight training), got {mode!r}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    bad = [n for n in layer_names if not isinstance(net.get_submodule(n), SwitchableQuantLinear)]
    if bad or not layer_names:
        raise ValueError("LoRA needs switchable Linear layers (this model's searchable layers are "
                         f"{'convolutions' if bad else 'none'}); train it with lora=None (full weights)")
    names = ["shared"] if mode == "shared" else [adapter_name(b) for b in w_candidates]
    with SeededRNG(seed):
        for name in names:
            config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=0.0,
                                target_modules=list(layer_names), bias="none")
            config._register_custom_module({SwitchableQuantLinear: QuantLoraLinear})
            inject_adapter_in_model(config, net, adapter_name=name)
    wrappers = {n: net.get_submodule(n) for n in layer_names}
    for w in wrappers.values():
        assert isinstance(w, QuantLoraLinear), type(w)
        w.craftlab_lora_mode = mode
        w.set_adapter(names)  # every adapter active (trainable); the forward picks which one runs
    return wrappers


def lora_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Every LoRA parameter (``lora_A`` / ``lora_B`` of every adapter)."""
    return [p for n, p in net.named_parameters() if ".lora_A." in n or ".lora_B." in n]
