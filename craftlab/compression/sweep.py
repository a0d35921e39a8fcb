"""Sweeps: models x pruning settings x bit settings -> one tidy table (pandas), saved as CSV/JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..data import DataBundle
from ..settings import DEFAULT_SETTING, Setting, make_setting, parse_compensation, parse_recipe, parse_setting
from .pipeline import compress_and_evaluate


def settings_grid(
    methods: Iterable[str] = ("magnitude", "wanda"),
    sparsities: Iterable[float] = (0.5, 0.7, 0.9),
    patterns: Iterable[str] = ("2:4",),
    bits: Iterable[tuple[int | None, int | None]] = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 8)),
    recalibrate_bn: bool = False,
    recipe: str = "uniform",
    compensations: Iterable[str | None] = (),
) -> list[Setting]:
    """The compression settings of a sweep: FP32, each pruning setting alone and each (w_bits, a_bits) alone.

    Bit settings use `recipe`. Each entry of `compensations` (``"qwt"``, ``"qwt-v2"``) adds, right after
    every pruning and bit setting, the same setting with that compensation, so a table shows the
    compressed model and its compensated versions side by side.

    Example::

        settings_grid(methods=["magnitude"], sparsities=[0.5], patterns=[], bits=[(4, 4)], recipe="repq",
                      compensations=["qwt", "qwt-v2"])
        # FP32, magnitude 50%, + QwT, + QwT-v2, W4A4 repq, W4A4 repq + QwT, W4A4 repq + QwT-v2
    """
    recipe = parse_recipe(recipe)
    comps = list(dict.fromkeys(parse_compensation(c) for c in compensations))
    comps = [c for c in comps if c is not None]

    def with_comps(s: Setting) -> list[Setting]:
        return [s] + [make_setting(**{**_make_args(s), "compensation": c}) for c in comps]

    grid: list[Setting] = [DEFAULT_SETTING]
    for method in methods:
        for s in sparsities:
            grid += with_comps(make_setting(method, s, recalibrate_bn=recalibrate_bn))
        for p in patterns:
            grid += with_comps(make_setting(p, nm_score=method, recalibrate_bn=recalibrate_bn))
    for w, a in bits:
        grid += with_comps(make_setting("none", 0.0, w, a, recipe=recipe))
    return list(dict.fromkeys(grid))


def _make_args(s: Setting) -> dict[str, Any]:
    """make_setting arguments that rebuild `s`."""
    d = s.as_dict()
    if d["method"] == "N:M":
        d["method"] = d.pop("pattern")
    else:
        d.pop("pattern")
    return d


def _kind(s: Setting) -> str:
    return {(False, False): "fp", (True, False): "prune", (False, True): "quant"}.get((s.prunes, s.quantizes),
                                                                                       "prune+quant")


def sweep(
    models: Mapping[str, nn.Module | str | os.PathLike] | Iterable[str | os.PathLike],
    data: DataBundle,
    settings: Iterable[dict[str, Any]] | None = None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    extra_columns: Mapping[str, Mapping[str, Any]] | None = None,
    **grid: Any,
) -> pd.DataFrame:
    """Evaluate every model under every compression setting.

    Args:
        models: label -> model or checkpoint folder (or a list of checkpoint folders, labelled by path).
        data: the bundle whose `split` is evaluated and whose ``calib`` split calibrates Wanda / PTQ.
        settings: :class:`~craftlab.settings.Setting` objects, their labels (``"wanda 70%"``, ``"W4A8"``)
            or dicts of :func:`~craftlab.settings.make_setting` arguments; default :func:`settings_grid`
            (``**grid`` is passed to it).
        out: ``NAME.csv`` / ``NAME.json`` writes both files; any other path is a folder that gets
            ``sweep.csv`` and ``sweep.json``.
        extra_columns: label -> columns to add to that model's rows (e.g. optimizer, rho, seed).

    Returns:
        One row per (model, setting): ``model, setting`` (its label), ``kind`` (fp / prune / quant /
        prune+quant), ``method, sparsity, pattern, w_bits, a_bits, recipe, compensation, fp_accuracy,
        accuracy, accuracy_drop, loss, size_mb, bitops, params, sparsity_measured``.
    """
    from ..checkpoint import load_checkpoint

    if not isinstance(models, Mapping):
        models = {str(p): p for p in models}
    settings = [parse_setting(s) for s in settings] if settings is not None else settings_grid(**grid)
    rows = []
    total = len(models) * len(settings)
    bar = tqdm(total=total, desc="sweep", disable=not progress, leave=False)
    for label, m in models.items():
        model = m if isinstance(m, nn.Module) else load_checkpoint(m)
        for s in settings:
            res = compress_and_evaluate(model, data, split=split, setting=s)
            rows.append({"model": label, "setting": s.label(), "kind": _kind(s),
                         "method": s.nm_score if s.method == "N:M" else (s.method if s.prunes else None),
                         "sparsity": s.sparsity, "pattern": s.pattern, "w_bits": s.w_bits, "a_bits": s.a_bits,
                         "recipe": s.recipe, "compensation": s.compensation,
                         **{k: res[k] for k in ("fp_accuracy", "accuracy", "accuracy_drop", "loss", "size_mb",
                                                "bitops", "params", "sparsity_measured")},
                         **(extra_columns or {}).get(label, {})})
            bar.update()
    bar.close()
    df = pd.DataFrame(rows)
    if out is not None:
        save_table(df, out)
    return df


def save_table(df: pd.DataFrame, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write `df` as CSV and JSON (records) next to each other; returns both paths."""
    out = Path(out)
    out = out.with_suffix("") if out.suffix in (".csv", ".json") else out / "sweep"
    out.parent.mkdir(parents=True, exist_ok=True)
    csv, js = out.with_suffix(".csv"), out.with_suffix(".json")
    df.to_csv(csv, index=False)
    js.write_text(json.dumps(json.loads(df.to_json(orient="records")), indent=1))
    return csv, js
