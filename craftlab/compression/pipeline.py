"""One call for "prune, then quantize, then compensate, then measure": what the CLI, sweeps and the app use.

Order: prune (when ``sparsity > 0`` or a `pattern` is given) → re-estimate BatchNorm statistics (with
``recalibrate_bn=True``) → quantize (when bits are set, with the chosen ``recipe``) → re-estimate them again on
the quantized model, quantizers on (with ``recalibrate_bn=True``) → compensate (with ``compensation``: fitted
against the *uncompressed* model on the calibration set). So ``recalibrate_bn`` is one protocol for every row:
a quantized row gets the same re-estimation as a pruned one (stale statistics explained most of the measured
quantization "gains" on resnet-tiny), and ``compress(m, w_bits=4, a_bits=8, recalibrate_bn=True, calib=c)``
equals ``recalibrate_bn(quantize(m, 4, 8, calib=c), c)`` (an unpruned float model keeps its trained statistics).
Compensation comes last, fitted on the model as it will run: re-estimating statistics *after* a QwT side path
was fitted double-corrects each block (resnet-tiny W4A4, seed 0: 80.5 % → 22.3 %), and after QwT-v2 it undoes
the folded per-channel affine. On a BatchNorm model the two fix the same per-channel error: compare a
compensation with BN re-estimation alone (the cheap baseline), as the claims ledger does.
Every argument is validated once, up front, before any copy, calibration pass or evaluation. The arguments can come as
plain keywords or as a :class:`craftlab.settings.Setting` (``setting=``; its
:meth:`~craftlab.settings.Setting.compress_kwargs` are exactly these keywords).

:func:`quantize` is THE quantization entry point (``craftlab.quantize``): ``recipe="uniform"`` (default) is
:func:`craftlab.compression.quant.quantize` unchanged; ``recipe="repq"`` is
:func:`craftlab.compression.vit_quant.quantize_vit` (RepQ-ViT-style, timm ViTs only).

Compensation (:func:`craftlab.compression.compensate.compensate`): ``"qwt"`` adds a linear side path per
block (not foldable: it costs parameters and latency); ``"qwt-v2"`` fits a channel-wise affine on every
compressed Linear/Conv2d and folds it into that layer (no added parameters, same integer grid). On a
model that is only pruned, ``"qwt-v2"`` is CWAC of the pruning error, folded into the pruned layers
(their zeros stay zeros); ``"qwt"`` then adds dense side paths.

The reference of the compensation is the uncompressed model, except after pruning with BatchNorm re-estimation
(``recalibrate_bn=True``): then it is the pruned, BN-re-estimated float model, so compensation corrects the
quantization error only. A per-channel affine on a conv's output followed by BatchNorm is what BN
re-estimation already adjusts (BN with re-estimated statistics is invariant to it), and fitting it to the
uncompressed model's activations *after* re-estimation undoes the re-estimation (measured on resnet-tiny,
magnitude 50 % +BN: 97.2 % → 76.0 %; at W4A4 +QwT-v2: 24.2 % against the uncompressed model, 78.6 %
against the re-estimated one). So pruning + BN re-estimation + compensation without quantization is an error.
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from typing import Any

import torch
from torch import nn

from .._errors import check_sparsity, unknown_name
from ..checkpoint import CheckpointError, load_checkpoint, read_meta
from ..data import DataBundle
from ..evaluation import evaluate
from ..registry import COMPENSATION_METHODS, PRUNE_SCORERS, QUANT_RECIPES
from ..settings import (
    GRANULARITIES,
    RECIPES,
    Setting,
    check_compensation,
    parse_bits,
    parse_compensation,
    parse_recipe,
    parse_setting,
)
from .compensate import _check_options as _check_compensation_options
from .compensate import compensate, find_blocks
from .prune import check_prune_args, prune
from .quant import model_stats

__all__ = ["RECIPES", "compress", "compress_and_evaluate", "load_compressed", "quantize", "resolve"]

_COMPENSATE_OPTIONS = tuple(n for n in inspect.signature(compensate).parameters
                            if n not in ("qmodel", "reference", "calib", "method"))


def check_recipe_args(recipe: Any, w_bits: Any, a_bits: Any, w_granularity: str = "channel",
                      a_granularity: str = "tensor", method: str | None = None, a_method: str | None = None,
                      calib: Any = None, targets: Any = None,
                      options: dict[str, Any] | None = None) -> tuple[str, int | None, int | None, dict[str, Any]]:
    """Validate :func:`quantize`'s arguments for `recipe` (a name of :data:`~craftlab.registry.QUANT_RECIPES`)
    before any work.

    Returns ``(recipe, w_bits, a_bits, keyword arguments of the recipe's quantize)``. `method` is the recipe's
    weight range method (default: its first), `a_method` the activations' (default: `method`); `options` are the
    recipe's own (its dataclass fields: uniform ``w_symmetric``, ``a_symmetric``, ``percentile``; repq
    ``softmax_quantizer``, ``ln_reparam``, ``quantize_stem_head``; both ``calib_samples``); an option of another
    recipe is a ValueError that names its owner. ``repq`` quantizes activations per tensor and chooses its layers
    itself (``targets`` is refused; ``quantize_stem_head=False`` keeps stem and head float).
    """
    recipe = parse_recipe(recipe)
    how = QUANT_RECIPES.get(recipe)
    options = dict(options or {})
    wrong = sorted(set(options) - set(how.options()))
    if wrong:
        owners = {o: n for n in QUANT_RECIPES.ordered()[::-1] if n != recipe for o in QUANT_RECIPES.get(n).options()}
        other = [o for o in wrong if o in owners]
        if other:
            raise ValueError(f"{', '.join(other)} belong(s) to recipe {owners[other[0]]!r}, not to recipe {recipe!r}")
        raise TypeError(f"quantize() got unexpected argument(s) {', '.join(wrong)}")
    kw = how(**options).backend_kwargs(w_granularity, a_granularity, method, a_method, targets)
    w_bits, a_bits = parse_bits(w_bits, "w_bits"), parse_bits(a_bits, "a_bits")
    for name, value in (("w_granularity", w_granularity), ("a_granularity", a_granularity)):
        if value not in GRANULARITIES:
            raise unknown_name(name, value, GRANULARITIES)
    if a_bits is not None and calib is None:
        raise ValueError("a_bits needs calibration data to set activation ranges: pass calib=<DataLoader or batches>")
    return recipe, w_bits, a_bits, kw


def check_recipe_model(model: nn.Module, recipe: str) -> None:
    """ValueError when `recipe` cannot quantize `model` (``repq`` needs a timm VisionTransformer)."""
    QUANT_RECIPES.get(parse_recipe(recipe))().check_model(model)


def _recipe_quantize(model: nn.Module, recipe: str, w_bits: int | None, a_bits: int | None, calib: Any,
                     kw: dict[str, Any]) -> nn.Module:
    """The quantized copy of `model` by `recipe` (`kw`: :func:`check_recipe_args`'s, the recipe's options inside)."""
    return QUANT_RECIPES.get(recipe)().quantize(model, w_bits, a_bits, calib, **kw)


def quantize(
    model: nn.Module,
    w_bits: int | None = 8,
    a_bits: int | None = None,
    w_granularity: str = "channel",
    a_granularity: str = "tensor",
    method: str | None = None,
    a_method: str | None = None,
    calib: Any = None,
    targets: Any = None,
    *,
    recipe: str = "uniform",
    **options: Any,
) -> nn.Module:
    """Return a post-training-quantized copy of `model` (fake quantization) with the chosen recipe.

    Args:
        w_bits, a_bits: weight / activation bits (2-8 or 16; None = float). `a_bits` needs `calib`.
        recipe: ``"uniform"`` (default): :func:`craftlab.compression.quant.quantize`, the inputs and weights
            of Conv2d/Linear layers (all arguments and defaults as there, ``method`` default ``minmax``);
            ``"repq"``: :func:`craftlab.compression.vit_quant.quantize_vit`, RepQ-ViT-style PTQ of a timm ViT
            (also the inputs of both attention matmuls, log√2 post-softmax quantizer, LayerNorm
            re-parameterization; ``method`` is its ``w_method``, ``repq`` or ``minmax``, default ``repq``).
        w_granularity, a_granularity, method, a_method, calib, targets: see :func:`check_recipe_args` for
            what each recipe accepts.
        **options: uniform: ``w_symmetric``, ``a_symmetric``, ``percentile``, ``calib_samples``; repq:
            ``softmax_quantizer``, ``ln_reparam``, ``quantize_stem_head``, ``calib_samples``.

    Example::

        q = craftlab.quantize(model, 4, 4, calib=data.calib)                 # uniform W4A4 (Conv2d/Linear)
        r = craftlab.quantize(model, 4, 4, calib=data.calib, recipe="repq")  # RepQ-ViT W4A4
    """
    recipe, w_bits, a_bits, kw = check_recipe_args(recipe, w_bits, a_bits, w_granularity, a_granularity, method,
                                                   a_method, calib, targets, options)
    check_recipe_model(model, recipe)
    return _recipe_quantize(model, recipe, w_bits, a_bits, calib, kw)


BN_QWT2_CLASH = ("BatchNorm re-estimation and QwT-v2 correct the same per-channel error of a CNN and undo each "
                 "other when combined (measured on resnet-tiny by the composition study, benchmarks/RESULTS.md "
                 "'compose'): use one of them")
"""What :func:`compress` warns (and the app says under its cards) when a CNN gets both."""

_DEFAULTS: dict[str, Any] = {
    "method": "magnitude", "sparsity": 0.0, "pattern": None, "w_bits": None, "a_bits": None, "calib": None,
    "scope": None, "w_granularity": "channel", "a_granularity": "tensor", "quant_method": None,
    "targets": None, "seed": 0, "recalibrate_bn": False, "wanda_inputs": "dense", "recipe": "uniform",
    "compensation": None, "compensation_options": None,
}
_SETTING_FIELDS = ("method", "sparsity", "pattern", "w_bits", "a_bits", "w_granularity", "a_granularity",
                   "recalibrate_bn", "recipe", "compensation")


def resolve(setting: Setting | str | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Validate the arguments of :func:`compress` once and return them normalized (all keys present).

    `setting` (a :class:`~craftlab.settings.Setting`, its label or a dict of ``make_setting`` arguments)
    supplies the pruning/bit/recipe/compensation fields; the other keywords (``calib``, ``scope``,
    ``quant_method``, ``targets``, ``seed``, ``wanda_inputs``, ``compensation_options``) may be given beside
    it. ValueError names the problem.
    """
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"compress() got unexpected argument(s) {', '.join(sorted(unknown))}")
    if setting is not None:
        from_setting = parse_setting(setting).compress_kwargs()
        clash = [k for k in (*_SETTING_FIELDS, *from_setting) if k in kwargs and kwargs[k] != _DEFAULTS[k]]
        if clash:
            raise ValueError(f"give either setting= or {', '.join(dict.fromkeys(clash))}, not both")
        kwargs = {**kwargs, **from_setting}
    kw = {**_DEFAULTS, **kwargs}
    kw["pattern"] = kw["pattern"] or None
    kw["recalibrate_bn"] = bool(kw["recalibrate_bn"])
    sparsity = None if kw["sparsity"] is None or kw["sparsity"] == "" else kw["sparsity"]
    if kw["pattern"] is None:
        sparsity = check_sparsity(sparsity or 0.0)
    elif sparsity is not None and check_sparsity(sparsity) == 0:
        sparsity = None  # a pattern fixes the sparsity; 0 means "not given"
    kw["prunes"] = kw["pattern"] is not None or sparsity > 0
    if kw["prunes"]:
        sparsity, kw["scope"], _ = check_prune_args(sparsity, kw["method"], kw["scope"], kw["pattern"], kw["calib"],
                                                    kw["wanda_inputs"], kw["recalibrate_bn"])
    else:
        if kw["method"] not in PRUNE_SCORERS:
            raise unknown_name("pruning method", kw["method"], PRUNE_SCORERS.names())
        if kw["wanda_inputs"] != "dense":
            raise ValueError("wanda_inputs is set but nothing is pruned: give a sparsity or a pattern")
        if kw["recalibrate_bn"] and kw["calib"] is None:
            raise ValueError("recalibrate_bn=True needs calibration data: pass calib=<DataLoader or batches>")
    kw["sparsity"] = sparsity
    kw["recipe"], kw["w_bits"], kw["a_bits"], kw["quant_kwargs"] = check_recipe_args(
        kw["recipe"], kw["w_bits"], kw["a_bits"], kw["w_granularity"], kw["a_granularity"], kw["quant_method"], None,
        kw["calib"], kw["targets"])
    kw["quantizes"] = kw["w_bits"] is not None or kw["a_bits"] is not None
    kw["compensation"] = parse_compensation(kw["compensation"])
    opts = dict(kw["compensation_options"] or {})
    if kw["compensation"] is None:
        if opts:
            raise ValueError("compensation_options is set but compensation is None: "
                             "pass compensation='qwt' or 'qwt-v2'")
    else:
        check_compensation(kw["compensation"], kw["quantizes"], kw["prunes"], kw["recalibrate_bn"])
        if kw["calib"] is None:
            raise ValueError("compensation needs calibration data to fit on: pass calib=<DataLoader or batches>")
        unknown = sorted(set(opts) - set(_COMPENSATE_OPTIONS))
        if unknown:
            raise unknown_name("compensation option", unknown[0], _COMPENSATE_OPTIONS)
        how = COMPENSATION_METHODS.get(kw["compensation"])
        opts.setdefault("fold", how.foldable)
        if opts["fold"] and not how.foldable:
            raise ValueError(f"{how.label} cannot be folded into the layers (QwT's per-block matrices mix channels): "
                             "use compensation='qwt-v2' to fold, or fold=False")
        _check_compensation_options(kw["compensation"], opts.get("target") or how.default_target,
                                    opts.get("ridge", 0.0), opts.get("holdout", 0.0), opts.get("max_tokens"),
                                    opts.get("conv_groups", 1))
    kw["compensation_options"] = opts
    return kw


def _has_batchnorm(model: nn.Module) -> bool:
    from .bn import batchnorm_layers

    return bool(batchnorm_layers(model))


def _check_model(model: nn.Module, kw: dict[str, Any]) -> None:
    """Checks that need the model, run before any work: the recipe fits it, QwT finds its blocks."""
    if kw["quantizes"]:
        check_recipe_model(model, kw["recipe"])
    if kw["compensation"] == "qwt":
        find_blocks(model, kw["compensation_options"].get("blocks"))


def compress(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float = 0.0,
    pattern: str | None = None,
    w_bits: int | None = None,
    a_bits: int | None = None,
    calib: Any = None,
    scope: str | None = None,
    w_granularity: str = "channel",
    a_granularity: str = "tensor",
    quant_method: str | None = None,
    targets: Any = None,
    seed: int = 0,
    recalibrate_bn: bool = False,
    wanda_inputs: str = "dense",
    setting: Setting | str | None = None,
    recipe: str = "uniform",
    compensation: str | None = None,
    compensation_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Prune (when ``sparsity > 0`` or a `pattern` is given), re-estimate BatchNorm statistics (with
    `recalibrate_bn`, needs `calib`), quantize (when bits are set) with `recipe`, then compensate.

    Args:
        recipe: ``"uniform"`` or ``"repq"`` (timm ViTs): see :func:`quantize`. ``quant_method`` is the
            recipe's weight range method (default ``minmax`` for uniform, ``repq`` for repq).
        compensation: None, ``"qwt"`` or ``"qwt-v2"``: fitted by
            :func:`~craftlab.compression.compensate.compensate` on `calib` against `model` itself (the
            uncompressed model), after pruning and quantization; ``qwt-v2`` is folded. Needs something
            compressed (bits or pruning) and `calib`.
        compensation_options: more keywords of ``compensate`` (``ridge``, ``max_tokens``, ``blocks``,
            ``placement``, ``target``, ``holdout``, ``conv_groups``, ``r2_gate``, ``fold``, ``seed``).

    ``compress(model, setting=s, calib=...)`` takes a :class:`~craftlab.settings.Setting` (or its label,
    e.g. ``"W4A4 repq + QwT-v2"``) instead of the pruning/bit/recipe/compensation keywords. Returns a new
    model; `model` is not changed. With nothing to do, returns a copy. The compensation's summary
    (parameters added, fitting seconds, blocks compensated) is in ``.craftlab_compression["compensation"]``.

    Example::

        q = compress(model, w_bits=4, a_bits=4, recipe="repq", compensation="qwt-v2", calib=data.calib)
    """
    given = {k: v for k, v in locals().items() if k not in ("model", "setting")}
    kw = resolve(setting, **given)
    _check_model(model, kw)
    return _compress(model, kw)


def _compress(model: nn.Module, kw: dict[str, Any]) -> nn.Module:
    out = reference = model
    if kw["prunes"]:
        out = prune(out, kw["sparsity"], method=kw["method"], scope=kw["scope"],
                    pattern=kw["pattern"], calib=kw["calib"], targets=kw["targets"], seed=kw["seed"],
                    wanda_inputs=kw["wanda_inputs"], recalibrate_bn=kw["recalibrate_bn"])
    if kw["recalibrate_bn"] and kw["prunes"]:
        reference = out  # compensate against the BN-re-estimated float model (see the module docstring)
    if kw["quantizes"]:
        out = _recipe_quantize(out, kw["recipe"], kw["w_bits"], kw["a_bits"], kw["calib"], kw["quant_kwargs"])
        if kw["recalibrate_bn"]:
            from .bn import recalibrate_bn_

            recalibrate_bn_(out, kw["calib"])  # the quantized model's own statistics, quantizers on (see above)
    if kw["compensation"] == "qwt-v2" and kw["recalibrate_bn"] and _has_batchnorm(out):
        warnings.warn(BN_QWT2_CLASH, UserWarning, stacklevel=3)
    if kw["compensation"] is not None:
        res = compensate(out, reference, kw["calib"], method=kw["compensation"], **kw["compensation_options"])
        out = res.model
        keep = ("fitted", "compensated", "params_added", "fit_seconds", "calib_images", "output_mse_before",
                "output_mse_after")
        info = out.craftlab_compression
        info["compensation"] = {**info["compensation"], **{k: res.summary[k] for k in keep}}
    return copy.deepcopy(out) if out is model else out


def compress_and_evaluate(model: nn.Module, data: DataBundle, split: str = "test",
                          compressed: nn.Module | None = None, setting: Setting | str | None = None,
                          fp: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """Accuracy of `model` before and after :func:`compress` (calibrated on ``data.calib``).

    The settings (keywords of :func:`compress`, or ``setting=`` a Setting) are validated before anything
    is evaluated. Pass `compressed` (the result of ``compress(model, **settings)``) to evaluate a model
    already made. Returns ``fp_accuracy``, ``fp_loss``, ``accuracy``, ``loss``, ``accuracy_drop``, the
    settings (with ``setting``: its label), and the compressed model's ``size_mb``, ``sparsity_measured``,
    ``bitops`` and ``params`` (QwT's side paths count as float parameters and MACs). `fp`: the uncompressed
    model's ``evaluate`` result on `split`, when known (a sweep evaluates it once per model, not per setting).

    Example::

        res = craftlab.compress_and_evaluate(model, data, setting="wanda 70% + W4A8", calib=data.calib)
        res["fp_accuracy"], res["accuracy"], res["size_mb"], res["bitops"]
    """
    settings.setdefault("calib", data.calib)
    kw = resolve(setting, **settings)
    _check_model(model, kw)
    loader = data.loader(split)
    fp = evaluate(model, loader) if fp is None else fp
    if compressed is None:
        compressed = _compress(model, kw)
    res = measure(compressed, loader, next(iter(loader))[0][:1], kw["targets"])
    shown = {k: v for k, v in settings.items() if k != "calib"}
    if setting is not None:
        s = parse_setting(setting)
        shown = {**s.compress_kwargs(), **shown, "setting": s.label()}
    return {**shown, "fp_accuracy": fp["accuracy"], "fp_loss": fp["loss"], **res,
            "accuracy_drop": fp["accuracy"] - res["accuracy"]}


def measure(model: nn.Module, split: Any, example: torch.Tensor, targets: Any = None) -> dict[str, Any]:
    """THE numbers every table reports of one (compressed) model on one split: ``accuracy``, ``loss``, ``n``
    (:func:`~craftlab.evaluate` on `split`, a DataLoader or batches), ``sparsity_measured`` (of the `targets`
    layers), ``size_mb``, ``bitops`` and ``params`` (:func:`~craftlab.compression.quant.model_stats` on one
    `example` input). The app's points and :func:`compress_and_evaluate` both use it.

    Example::

        measure(craftlab.compress(model, setting="W4A8", calib=data.calib), data.test, data.test_set[0][0][None])
    """
    from .prune import sparsity_report

    res = evaluate(model, split)
    stats = model_stats(model, example)
    return {"accuracy": res["accuracy"], "loss": res["loss"], "n": res["n"],
            "sparsity_measured": sparsity_report(model, targets)["overall"], "size_mb": stats["size_mb"],
            "bitops": stats["bitops"], "params": stats["params"]}


def load_compressed(directory: str | os.PathLike) -> nn.Module:
    """Load a checkpoint written from a compressed model (``craftlab compress --out``, or
    ``save_checkpoint(compress(...), path, {..., "compression": setting.compress_kwargs()})``).

    A compressed model has modules and buffers a plain architecture lacks (activation grids, quantized attention,
    QwT side paths), so :func:`~craftlab.checkpoint.load_checkpoint` alone cannot rebuild it. This builds the
    architecture, compresses it with the recorded setting on a throw-away calibration batch (random images of the
    recorded input size: only the module structure matters) and then loads every saved tensor into that skeleton
    strictly, so weights, activation scales and fitted compensations are exactly the saved ones. A checkpoint
    without a ``"compression"`` record loads as with ``load_checkpoint``.

    Example::

        q = load_compressed("runs/vit-sam-w4a8")   # after: craftlab compress ... --w-bits 4 --a-bits 8 --out ...
    """
    from ..models import build_model

    meta = read_meta(directory)
    record = meta.get("compression")
    if not record:
        return load_checkpoint(directory)
    if not isinstance(record, dict):
        raise CheckpointError(f"checkpoint {str(directory)!r}: its 'compression' record is not a mapping")
    arch = meta["architecture"]
    base = build_model(arch, num_classes=meta.get("num_classes"))
    size = (meta.get("data") or {}).get("input_size") or list(base.default_cfg.get("input_size", (3, 224, 224)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, *size, generator=gen)
    y = torch.randint(0, int(meta.get("num_classes") or 2), (64,), generator=gen)
    try:
        skeleton = compress(base, calib=[(x[:32], y[:32]), (x[32:], y[32:])], **record)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(directory)!r}: its compression record {record!r} cannot be "
                              f"rebuilt: {err}") from err
    model = load_checkpoint(directory, model=skeleton)
    model.craftlab_compression = getattr(skeleton, "craftlab_compression", {})  # type: ignore[attr-defined]
    return model
