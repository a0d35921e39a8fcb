"""One call for "prune, then quantize, then measure": what the CLI, sweeps and the app use."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._errors import check_sparsity
from ..data import DataBundle
from ..evaluation import evaluate
from ..settings import parse_bits, parse_pattern
from .prune import prune
from .quant import model_stats, quantize


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
) -> nn.Module:
    """Prune (when ``sparsity > 0`` or a `pattern` is given), then quantize (when bits are set).

    Returns a new model; `model` is not changed. With no sparsity, pattern or bits, returns a copy.
    """
    import copy

    sparsity = check_sparsity(sparsity or 0.0)
    w_bits, a_bits = parse_bits(w_bits, "w_bits"), parse_bits(a_bits, "a_bits")
    if pattern:
        parse_pattern(pattern)
    out = model
    if pattern or sparsity > 0:
        out = prune(out, None if pattern else sparsity, method=method, scope=scope, pattern=pattern or None,
                    calib=calib, targets=targets, seed=seed)
    if w_bits is not None or a_bits is not None:
        out = quantize(out, w_bits=w_bits, a_bits=a_bits, w_granularity=w_granularity,
                       a_granularity=a_granularity, method=quant_method, calib=calib, targets=targets)
    return copy.deepcopy(out) if out is model else out


def compress_and_evaluate(model: nn.Module, data: DataBundle, split: str = "test",
                          compressed: nn.Module | None = None, **settings: Any) -> dict[str, Any]:
    """Accuracy of `model` before and after :func:`compress` (calibrated on ``data.calib``).

    Pass `compressed` (the result of ``compress(model, **settings)``) to evaluate a model already made.
    Returns ``fp_accuracy``, ``fp_loss``, ``accuracy``, ``loss``, ``accuracy_drop``, the settings,
    and the compressed model's ``size_mb``, ``sparsity`` and ``bitops``.
    """
    from .prune import sparsity_report

    loader = data.loader(split)
    fp = evaluate(model, loader)
    settings.setdefault("calib", data.calib)
    if compressed is None:
        compressed = compress(model, **settings)
    res = evaluate(compressed, loader)
    x = next(iter(loader))[0][:1]
    stats = model_stats(compressed, x)
    shown = {k: v for k, v in settings.items() if k != "calib"}
    return {**shown, "fp_accuracy": fp["accuracy"], "fp_loss": fp["loss"], "accuracy": res["accuracy"],
            "loss": res["loss"], "accuracy_drop": fp["accuracy"] - res["accuracy"],
            "sparsity_measured": sparsity_report(compressed, settings.get("targets"))["overall"],
            "size_mb": stats["size_mb"], "bitops": stats["bitops"], "n": res["n"]}
