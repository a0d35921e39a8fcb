"""One call for "prune, then quantize, then measure": what the CLI, sweeps and the app use.

Order: prune (when ``sparsity > 0`` or a `pattern` is given) → re-estimate BatchNorm statistics (with
``recalibrate_bn=True``) → quantize (when bits are set). Every argument is validated once, up front,
before any copy, calibration pass or evaluation. The arguments can come as plain keywords or as a
:class:`craftlab.settings.Setting` (``setting=``; its :meth:`~craftlab.settings.Setting.compress_kwargs`
are exactly these keywords).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .._errors import check_sparsity, unknown_name
from ..data import DataBundle
from ..evaluation import evaluate
from ..settings import PRUNE_METHODS, Setting, parse_setting
from .prune import check_prune_args, prune
from .quant import check_quant_args, model_stats, quantize

_DEFAULTS: dict[str, Any] = {
    "method": "magnitude", "sparsity": 0.0, "pattern": None, "w_bits": None, "a_bits": None, "calib": None,
    "scope": None, "w_granularity": "channel", "a_granularity": "tensor", "quant_method": "minmax",
    "targets": None, "seed": 0, "recalibrate_bn": False, "wanda_inputs": "dense",
}
_SETTING_FIELDS = ("method", "sparsity", "pattern", "w_bits", "a_bits", "w_granularity", "a_granularity",
                   "recalibrate_bn")


def resolve(setting: Setting | str | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Validate the arguments of :func:`compress` once and return them normalized (all keys present).

    `setting` (a :class:`~craftlab.settings.Setting`, its label or a dict of ``make_setting`` arguments)
    supplies the pruning/bit fields; the other keywords (``calib``, ``scope``, ``quant_method``,
    ``targets``, ``seed``, ``wanda_inputs``) may be given beside it. ValueError names the problem.
    """
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"compress() got unexpected argument(s) {', '.join(sorted(unknown))}")
    if setting is not None:
        clash = [k for k in _SETTING_FIELDS if k in kwargs and kwargs[k] != _DEFAULTS[k]]
        if clash:
            raise ValueError(f"give either setting= or {', '.join(clash)}, not both")
        kwargs = {**kwargs, **parse_setting(setting).compress_kwargs()}
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
        if kw["method"] not in PRUNE_METHODS:
            raise unknown_name("pruning method", kw["method"], PRUNE_METHODS)
        if kw["wanda_inputs"] != "dense":
            raise ValueError("wanda_inputs is set but nothing is pruned: give a sparsity or a pattern")
        if kw["recalibrate_bn"] and kw["calib"] is None:
            raise ValueError("recalibrate_bn=True needs calibration data: pass calib=<DataLoader or batches>")
    kw["sparsity"] = sparsity
    kw["w_bits"], kw["a_bits"] = check_quant_args(kw["w_bits"], kw["a_bits"], kw["w_granularity"],
                                                  kw["a_granularity"], kw["quant_method"], None, kw["calib"])
    return kw


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
    quant_method: str = "minmax",
    targets: Any = None,
    seed: int = 0,
    recalibrate_bn: bool = False,
    wanda_inputs: str = "dense",
    setting: Setting | str | None = None,
) -> nn.Module:
    """Prune (when ``sparsity > 0`` or a `pattern` is given), re-estimate BatchNorm statistics (with
    `recalibrate_bn`, needs `calib`), then quantize (when bits are set).

    ``compress(model, setting=s, calib=...)`` takes a :class:`~craftlab.settings.Setting` (or its label)
    instead of the pruning/bit keywords. Returns a new model; `model` is not changed. With nothing to do,
    returns a copy.
    """
    given = {k: v for k, v in locals().items() if k not in ("model", "setting")}
    return _compress(model, resolve(setting, **given))


def _compress(model: nn.Module, kw: dict[str, Any]) -> nn.Module:
    out = model
    if kw["prunes"]:
        out = prune(out, kw["sparsity"], method=kw["method"], scope=kw["scope"],
                    pattern=kw["pattern"], calib=kw["calib"], targets=kw["targets"], seed=kw["seed"],
                    wanda_inputs=kw["wanda_inputs"], recalibrate_bn=kw["recalibrate_bn"])
    elif kw["recalibrate_bn"]:
        from .bn import recalibrate_bn as _recalibrate

        out = _recalibrate(out, kw["calib"])
    if kw["w_bits"] is not None or kw["a_bits"] is not None:
        out = quantize(out, w_bits=kw["w_bits"], a_bits=kw["a_bits"], w_granularity=kw["w_granularity"],
                       a_granularity=kw["a_granularity"], method=kw["quant_method"], calib=kw["calib"],
                       targets=kw["targets"])
    return copy.deepcopy(out) if out is model else out


def compress_and_evaluate(model: nn.Module, data: DataBundle, split: str = "test",
                          compressed: nn.Module | None = None, setting: Setting | str | None = None,
                          **settings: Any) -> dict[str, Any]:
    """Accuracy of `model` before and after :func:`compress` (calibrated on ``data.calib``).

    The settings (keywords of :func:`compress`, or ``setting=`` a Setting) are validated before anything
    is evaluated. Pass `compressed` (the result of ``compress(model, **settings)``) to evaluate a model
    already made. Returns ``fp_accuracy``, ``fp_loss``, ``accuracy``, ``loss``, ``accuracy_drop``, the
    settings (with ``setting``: its label), and the compressed model's ``size_mb``, ``sparsity`` and ``bitops``.
    """
    from .prune import sparsity_report

    settings.setdefault("calib", data.calib)
    kw = resolve(setting, **settings)
    loader = data.loader(split)
    fp = evaluate(model, loader)
    if compressed is None:
        compressed = _compress(model, kw)
    res = evaluate(compressed, loader)
    x = next(iter(loader))[0][:1]
    stats = model_stats(compressed, x)
    shown = {k: v for k, v in settings.items() if k != "calib"}
    if setting is not None:
        s = parse_setting(setting)
        shown = {**s.compress_kwargs(), **shown, "setting": s.label()}
    return {**shown, "fp_accuracy": fp["accuracy"], "fp_loss": fp["loss"], "accuracy": res["accuracy"],
            "loss": res["loss"], "accuracy_drop": fp["accuracy"] - res["accuracy"],
            "sparsity_measured": sparsity_report(compressed, kw["targets"])["overall"],
            "size_mb": stats["size_mb"], "bitops": stats["bitops"], "n": res["n"]}
