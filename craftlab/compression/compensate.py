"""Closed-form compensation of a compressed model's error: QwT and QwT-v2 (channel-wise affine).

**QwT** (Fu et al., "Quantization without Tears", CVPR 2025): each block gets a linear side path,
``block_q(x) + W x + b ≈ block_fp(x)``, fitted by least squares on calibration tokens. As in the
official code, the fit target is the block's error **on the same quantized-path input** x, blocks are
fitted one after another on the compensated stream (block i sees the output of the compensated blocks
before it), and a block whose fit has R² ≤ 0 gets no compensation (the official gate). For conv blocks
(timm ResNet BasicBlock/Bottleneck) the side path is a 1×1 conv with the block's stride (grouped with
``conv_groups``; the official ResNet script uses groups = C/64). Differences from the official code:
the side path runs in float32 (the official one in FP16 at eval), and ``ridge`` is on the covariance
scale (the official ViT script has none; its ResNet script adds 1e-3·I to the un-normalised Gram
matrix, i.e. ``ridge = 1e-3 / tokens`` here). The matrices cannot fold into the block's layers, so
they cost parameters and latency, reported per block.

**QwT-v2** (Tang et al., arXiv 2505.20932): channel-wise affine compensation (CWAC) of a quantized
module's output, ``a_c·y_c + b_c``. The paper's exact closed form, ridge, placement and fit target were
not available; what follows is **DERIVED**: QwT's normal equations restricted to a diagonal map on
y_q, ``a_c = cov(y_q, y)/var(y_q)``, ``b_c = mean(y) − a_c·mean(y_q)``, fitted module after module on
the already compensated stream. The ridge λ shrinks the gain towards 1 (no compensation),
``a_c = (cov + λ)/(var + λ)``, a CraftLab choice (shrinking towards 0 would erase the channel); at
λ = 0 both readings agree. **Default placement**: every Linear/Conv2d that differs from the reference
(quantized, or with changed weights). That is where the affine folds for free (gain into the
per-output-channel weight scale, offset into the bias), and compensating each layer corrects its
error before a non-linearity or the next activation quantizer amplifies it. ``placement="blocks"``
puts the affine on block outputs instead (after the residual add it does not fold: it stays a 2·C
module). **Default target** (CraftLab's choice, measured): the reference model's own activations.
A per-channel least-squares gain on a noisy y_q is a shrinkage estimator (regression dilution,
a_c < 1); fitted to the FP module on the *same* quantized input, each layer shrinks its signal and no
later fit sees the FP stream to undo it, so the shrinkage compounds with depth (on the zoo
resnet-tiny at W6A6 this lowered test accuracy from 83.9 % to 71.5 %, against 94.2 % with the
reference target). ``target="same-input"`` gives the QwT-style reading.

**Beyond the papers**: the same CWAC fit on a *pruned* model's plain Linear/Conv2d layers; folding
scales weight rows, so zeros stay zeros. Also CraftLab additions: ``holdout`` (score R² on held-out
calibration images) and ``target="reference"`` (fit to the reference model's own activations).

Example::

    q = craftlab.quantize(model, w_bits=4, a_bits=4, calib=data.calib)
    res = compensate(q, model, data.calib, method="qwt-v2", fold=True)
    res.table()                     # per module: R², calibration MSE before/after, parameters, ridge
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._errors import unknown_name
from ..registry import COMPENSATION_METHODS
from ._calib import iter_inputs
from .fold import ChannelAffine, QwTBlock, fold_compensation
from .quant import QuantConv2d, QuantLinear

METHODS = COMPENSATION_METHODS.names()  # the built-in compensations: compression/compensations/, one module each
CALIB_CHUNK = 64
"""Images per forward pass of the fit. The calibration images are re-batched into chunks of this size, so the fit
does not depend on how the caller split them: float32 forwards of different batch shapes differ in the last bits,
activation quantization turns such differences into rounding flips, and block after block the fit drifted
(vit-tiny W4A4 repq + QwT: 66.6 % calibrated as 1x128 vs 65.7 % as 2x64 before re-batching)."""
TARGETS = ("same-input", "reference")


@dataclass
class CompensationResult:
    """``model`` (a new model), ``report`` (one dict per block/module) and ``summary`` (whole-model numbers)."""

    model: nn.Module
    report: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    def table(self):
        """The report as a pandas DataFrame (name, R², calibration MSE before/after, parameters added, ridge used)."""
        import pandas as pd

        return pd.DataFrame(self.report)


def find_blocks(model: nn.Module, blocks: Sequence[str] | None = None) -> list[str]:
    """Names of the blocks QwT compensates: timm ViT ``blocks.i``, timm ResNet ``layerN.M``, or `blocks`."""
    mods = dict(model.named_modules())
    if blocks is not None:
        names = [blocks] if isinstance(blocks, str) else list(blocks)
        for n in names:
            if n not in mods or not n:
                raise unknown_name("block", n, mods, hint="blocks= (or placement=) must name submodules of the model")
        if not names:
            raise ValueError("blocks= is empty: name at least one submodule")
        return names
    seq = getattr(model, "blocks", None)
    if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq):
        return [f"blocks.{i}" for i in range(len(seq))]
    stages = [f"layer{i}" for i in range(1, 9) if isinstance(getattr(model, f"layer{i}", None), nn.Sequential)]
    if stages:
        return [f"{s}.{j}" for s in stages for j in range(len(getattr(model, s)))]
    raise ValueError(f"no block structure found in {type(model).__name__} (neither timm ViT 'blocks' nor ResNet "
                     "'layerN'): pass blocks=[submodule names] to compensate")


def _check_architecture(model: nn.Module, reference: nn.Module) -> None:
    if any(isinstance(m, (QwTBlock, ChannelAffine)) for m in model.modules()):
        raise ValueError("the model is already compensated: compensate the uncompensated model")
    # parameters must match by name and shape; the model may carry extra buffers (quantizer state)
    got, ref = dict(model.named_parameters()), dict(reference.named_parameters())
    diff = sorted(set(got) ^ set(ref)) + [k for k in ref if k in got and got[k].shape != ref[k].shape]
    got_b = dict(model.named_buffers())
    diff += [k for k, v in reference.named_buffers() if k not in got_b or got_b[k].shape != v.shape]
    if diff:
        raise ValueError(f"reference is not the same architecture as the model ({len(diff)} parameters/buffers "
                         f"differ in name or shape, e.g. {diff[0]!r}): pass the uncompressed model it was made from")


def _changed_layers(model: nn.Module, reference: nn.Module) -> list[str]:
    ref = dict(reference.named_modules())
    out = []
    for n, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            r = ref[n]
            same_bias = (m.bias is None) == (r.bias is None) and (m.bias is None or torch.equal(m.bias, r.bias))
            if isinstance(m, (QuantLinear, QuantConv2d)) or not (torch.equal(m.weight, r.weight) and same_bias):
                out.append(n)
    if not out:
        raise ValueError("nothing to compensate: every Linear/Conv2d equals the reference's; pass placement=[names]")
    return out


def _channel_dim(mod: nn.Module, out: torch.Tensor) -> int:
    if isinstance(mod, nn.Conv2d):
        return 1
    if isinstance(mod, nn.Linear):
        return -1
    return 1 if out.ndim == 4 and any(isinstance(m, nn.Conv2d) for m in mod.modules()) else -1


def _trace(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[list[str], dict[str, nn.Module]]:
    """Execution order of `names` (by completion), and the BatchNorm that reads each module's output directly."""
    mods = dict(model.named_modules())
    order: list[str] = []
    produced: dict[int, tuple[torch.Tensor, str]] = {}
    next_bn: dict[str, nn.Module] = {}

    def done(name):
        def hook(_m, _args, out):
            if name not in order:
                order.append(name)
            if torch.is_tensor(out):
                produced[id(out)] = (out, name)
        return hook

    def bn_reads(bn):
        def hook(_m, args):
            hit = produced.get(id(args[0]))
            if hit is not None and hit[0] is args[0] and isinstance(mods[hit[1]], nn.Conv2d):
                next_bn[hit[1]] = bn
        return hook

    handles = [mods[n].register_forward_hook(done(n)) for n in names]
    handles += [m.register_forward_pre_hook(bn_reads(m)) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in order]
    if missing:
        raise ValueError(f"module {missing[0]!r} did not run in the model's forward pass: it cannot be compensated")
    return order, next_bn


def _stride(x: torch.Tensor, y: torch.Tensor, name: str) -> int:
    if x.ndim != 4 or y.ndim != 4:
        raise ValueError(f"conv block {name!r} must map (B, C, H, W) to (B, C', H', W'), got {tuple(x.shape)} -> "
                         f"{tuple(y.shape)}")
    s = max(1, round(x.shape[2] / y.shape[2]))
    if -(-x.shape[2] // s) != y.shape[2] or -(-x.shape[3] // s) != y.shape[3]:
        raise ValueError(f"block {name!r}: no 1x1-conv stride maps {tuple(x.shape[2:])} to {tuple(y.shape[2:])}")
    return s


def _parent(mods: dict[str, nn.Module], name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return mods[parent], child


def _gate_note(r2: float) -> str:
    if r2 != r2:
        return "R² gate: R² undefined (the error does not vary), no compensation"
    return f"R² gate: R² = {r2:.3g} ≤ 0, no compensation"


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """Eval mode inside; every module's flag restored after (an added wrapper takes its wrapped module's)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m in model.modules():  # pre-order: a parent first, then its children override
            inner = m.block if isinstance(m, QwTBlock) else m.module if isinstance(m, ChannelAffine) else None
            m.train(flags.get(m, flags.get(inner, False)))


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _outputs_mse(model: nn.Module, batches: list[torch.Tensor], ref_out: list[Any]) -> float:
    total, n = 0.0, 0
    for x, r in zip(batches, ref_out):
        y = model(x)
        if not (torch.is_tensor(y) and torch.is_tensor(r)) or y.shape != r.shape:
            return float("nan")
        total, n = total + float((y.float() - r.float()).pow(2).sum()), n + y.numel()
    return total / max(n, 1)


def _seconds_per_batch(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _check_options(method, target, ridge, holdout, max_tokens, conv_groups) -> None:
    if method not in COMPENSATION_METHODS:
        raise unknown_name("compensation method", method, COMPENSATION_METHODS.names())
    if target not in TARGETS:
        raise unknown_name("compensation target", target, TARGETS)
    if not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    if not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 2):
        raise ValueError(f"max_tokens must be an integer >= 2 or None, got {max_tokens!r}")
    if not isinstance(conv_groups, int) or conv_groups < 1:
        raise ValueError(f"conv_groups must be a positive integer, got {conv_groups!r}")


def compensate(
    qmodel: nn.Module,
    reference: nn.Module,
    calib: Iterable[Any] | None,
    method: str = "qwt",
    *,
    blocks: Sequence[str] | None = None,
    ridge: float = 0.0,
    r2_gate: bool = True,
    placement: str | Sequence[str] = "layers",
    max_tokens: int | None = None,
    target: str | None = None,
    holdout: float = 0.0,
    conv_groups: int = 1,
    fold: bool = False,
    seed: int = 0,
) -> CompensationResult:
    """Fit a closed-form compensation of `qmodel`'s error against `reference`; neither is changed.

    Args:
        qmodel: the compressed model (quantized by :func:`craftlab.quantize`, pruned, or both).
        reference: the uncompressed model it was made from (same architecture, else ValueError).
        calib: calibration batches (DataLoader or iterable of (x, y) / tensors), on qmodel's device.
        method: a compensation of :data:`craftlab.registry.COMPENSATION_METHODS`: ``"qwt"`` (per-block linear side
            path) or ``"qwt-v2"`` (channel-wise affine, CWAC), or one you registered.
        blocks: QwT's blocks (default: timm ViT ``blocks.i`` / ResNet ``layerN.M``); also the blocks of
            ``placement="blocks"``.
        ridge: λ added to the input covariance (per-token scale); 0 = plain least squares, with an
            automatic ridge (reported in ``ridge_used``) when the normal equations are singular.
        r2_gate: leave a block/module uncompensated when its fit has R² ≤ 0 (on the held-out images
            when ``holdout`` > 0, else on the calibration data, as the official code does).
        placement: qwt-v2 only: ``"layers"`` (every Linear/Conv2d that differs from the reference: the
            foldable default), ``"blocks"`` (block outputs: not foldable) or a list of module names.
        max_tokens: cap on the tokens/pixels of each fit (a seeded random subset of every batch).
        target: what each fit aims at: ``"same-input"`` (the reference module applied to the compensated
            quantized stream's input: the official QwT code, the default for qwt) or ``"reference"`` (the
            reference model's own activations on the same images: the default for qwt-v2, see above).
        holdout: fraction of each calibration batch held out of the fit, to score R² and gate on it.
        conv_groups: groups of QwT's 1×1 conv side path on conv blocks (the official ResNet code: C/64).
        fold: fold the channel affines into the layers (:func:`fold_compensation`).
        seed: seeds the `max_tokens` subsets.

    Returns:
        :class:`CompensationResult`: ``.model``, ``.report`` (per block/module: name, r2, mse_before,
        mse_after (calibration MSE of the block's error before/after), params_added, macs_added,
        ridge_used, tokens, compensated, note), ``.summary`` (output MSE against the reference before
        and after, parameters added, fitting seconds, seconds per batch before/after) and ``.table()``.

    Example::

        q = craftlab.quantize(model, w_bits=4, a_bits=4, calib=data.calib)
        res = compensate(q, model, data.calib, method="qwt")
        print(res.table()[["name", "r2", "mse_before", "mse_after", "params_added"]])
    """
    _check_options(method, target or "reference", ridge, holdout, max_tokens, conv_groups)
    how = COMPENSATION_METHODS.get(method)()
    target = target or how.default_target
    if calib is None:
        raise ValueError("compensate needs calibration data: pass calib=<DataLoader or batches>")
    _check_architecture(qmodel, reference)
    device = next(qmodel.parameters()).device
    if (ref_device := next(reference.parameters()).device) != device:
        raise ValueError(f"reference is on {ref_device}, the model on {device}: put both on one device")
    batches = [x.to(device) for x in iter_inputs(calib)]
    if not batches or sum(len(x) for x in batches) == 0:
        raise ValueError("the calibration set is empty: compensate needs calibration images (calib=...)")
    batches = list(torch.cat(batches).split(CALIB_CHUNK))  # the same chunks however the caller batched them
    start = time.perf_counter()
    work = copy.deepcopy(qmodel)
    # the fit hooks both models: a private copy of the reference keeps the caller's model hook-free, so another
    # thread may copy, calibrate or evaluate it meanwhile (the app compensates curve points in the background)
    reference = copy.deepcopy(reference)
    mods, ref_mods = dict(work.named_modules()), dict(reference.named_modules())
    opts = {"holdout": float(holdout), "max_tokens": max_tokens, "images": sum(len(x) for x in batches),
            "seed": seed, "ridge": float(ridge), "r2_gate": r2_gate, "target": target, "conv_groups": conv_groups}
    with torch.no_grad(), _evaluating(reference), _evaluating(work):
        ref_out = [reference(x) for x in batches]
        before = _outputs_mse(work, batches, ref_out)
        t_before = _seconds_per_batch(work, batches[0])
        names, next_bn = _trace(work, how.placements(work, reference, blocks, placement), batches[0][:2])
        report = how.fit(work, reference, names, batches, opts, mods, ref_mods, next_bn)
    fit_seconds = time.perf_counter() - start
    model = fold_compensation(work) if fold else work
    with torch.no_grad(), _evaluating(model):
        after = _outputs_mse(model, batches, ref_out)
        t_after = _seconds_per_batch(model, batches[0])
    if fold:
        how = {r["name"]: r for r in model.craftlab_compression["compensation"]["fold"]}
        for row in report:
            f = how.get(row["name"])
            row["folded"] = bool(f and f["folded"])
            if f and f["folded"]:  # 2·C before folding; C only if a bias had to be created
                row["params_added"] = row["params_added"] // 2 if "new bias" in f["how"] else 0
            elif f and not f["folded"]:
                row["note"] = "; ".join(filter(None, [row["note"], f["how"]]))
    summary = {"method": method, "target": target, "fitted": len(report),
               "compensated": sum(r["compensated"] for r in report),
               "params_added": _n_params(model) - _n_params(qmodel), "output_mse_before": before,
               "output_mse_after": after, "fit_seconds": fit_seconds, "calib_images": opts["images"],
               "seconds_per_batch_before": t_before, "seconds_per_batch_after": t_after, "folded": fold}
    info = dict(getattr(model, "craftlab_compression", {}))
    info["compensation"] = {**info.get("compensation", {}), **{k: summary[k] for k in ("method", "target", "folded")}}
    model.craftlab_compression = info
    return CompensationResult(model, report, summary)
