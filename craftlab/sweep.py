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

from .compress import compress_and_evaluate
from .data import DataBundle


def settings_grid(
    methods: Iterable[str] = ("magnitude", "wanda"),
    sparsities: Iterable[float] = (0.5, 0.7, 0.9),
    patterns: Iterable[str] = ("2:4",),
    bits: Iterable[tuple[int | None, int | None]] = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 8)),
) -> list[dict[str, Any]]:
    """The compression settings of a sweep: each pruning setting and each (w_bits, a_bits) alone."""
    grid: list[dict[str, Any]] = [{"kind": "fp"}]
    for method in methods:
        grid += [{"kind": "prune", "method": method, "sparsity": float(s)} for s in sparsities]
        grid += [{"kind": "prune", "method": method, "pattern": p} for p in patterns]
    grid += [{"kind": "quant", "w_bits": w, "a_bits": a} for w, a in bits]
    return grid


def setting_label(row: Mapping[str, Any]) -> str:
    """Short label of a sweep row: ``FP32``, ``magnitude 50%``, ``wanda 2:4``, ``W4A8``."""
    if row["kind"] == "fp":
        return "FP32"
    if row["kind"] == "prune":
        what = row["pattern"] if isinstance(row["pattern"], str) else f"{row['sparsity']:.0%}"
        return f"{row['method']} {what}"
    bits = [None if b is None or b != b else int(b) for b in (row["w_bits"], row["a_bits"])]  # NaN/None: float
    return "W{}A{}".format(*(b if b is not None else "FP" for b in bits))


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
        settings: dicts of :func:`craftlab.compress.compress` arguments (plus a ``kind`` label);
            default :func:`settings_grid` (``**grid`` is passed to it).
        out: ``NAME.csv`` / ``NAME.json`` writes both files; any other path is a folder that gets
            ``sweep.csv`` and ``sweep.json``.
        extra_columns: label -> columns to add to that model's rows (e.g. optimizer, rho, seed).

    Returns:
        One row per (model, setting): ``model, kind, method, sparsity, pattern, w_bits, a_bits,
        fp_accuracy, accuracy, accuracy_drop, loss, size_mb, bitops, sparsity_measured``.
    """
    from .checkpoint import load_checkpoint

    if not isinstance(models, Mapping):
        models = {str(p): p for p in models}
    settings = list(settings) if settings is not None else settings_grid(**grid)
    rows = []
    total = len(models) * len(settings)
    bar = tqdm(total=total, desc="sweep", disable=not progress, leave=False)
    for label, m in models.items():
        model = m if isinstance(m, nn.Module) else load_checkpoint(m)
        for s in settings:
            kwargs = {k: v for k, v in s.items() if k != "kind"}
            res = compress_and_evaluate(model, data, split=split, **kwargs)
            rows.append({"model": label, "kind": s.get("kind", "custom"), "method": kwargs.get("method"),
                         "sparsity": kwargs.get("sparsity", 0.0), "pattern": kwargs.get("pattern"),
                         "w_bits": kwargs.get("w_bits"), "a_bits": kwargs.get("a_bits"),
                         **{k: res[k] for k in ("fp_accuracy", "accuracy", "accuracy_drop", "loss", "size_mb",
                                                "bitops", "sparsity_measured")},
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
