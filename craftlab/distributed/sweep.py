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

from .._errors import unknown_name
from ..data import DataBundle
from ..settings import DEFAULT_SETTING, Setting, make_setting, parse_compensation, parse_recipe, parse_setting
from .cells import CellError, compute_row, evaluate_uncompressed
from .connect import last_line


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

    ``recalibrate_bn=True`` gives every pruning *and* bit setting the BatchNorm re-estimation (one protocol).

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
        grid += with_comps(make_setting("none", 0.0, w, a, recipe=recipe, recalibrate_bn=recalibrate_bn))
    return list(dict.fromkeys(grid))


def _make_args(s: Setting) -> dict[str, Any]:
    """make_setting arguments that rebuild `s`."""
    d = s.as_dict()
    if d["method"] == "N:M":
        d["method"] = d.pop("pattern")
    else:
        d.pop("pattern")
    return d


ENGINES = ("process", "ray")
"""``process``: this process, one cell after another (default, needs no Ray); ``ray``: Ray tasks on a local or
remote cluster (:mod:`craftlab.distributed.ray_engine`), the same table."""


def sweep(
    models: Mapping[str, nn.Module | str | os.PathLike] | Iterable[str | os.PathLike],
    data: DataBundle,
    settings: Iterable[dict[str, Any]] | None = None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    extra_columns: Mapping[str, Mapping[str, Any]] | None = None,
    engine: str = "process",
    address: str | None = None,
    keep_going: bool = False,
    cpus_per_task: int = 1,
    gpus_per_cell: float | None = None,
    **grid: Any,
) -> pd.DataFrame:
    """Evaluate every model under every compression setting.

    Args:
        models: label -> model, checkpoint folder or :class:`~craftlab.train.runs.RunSpec` (a cached run,
            fine-tuned first when it is not cached), or a list of checkpoint folders (labelled by path) or
            RunSpecs (labelled by key).
        data: the bundle whose `split` is evaluated and whose ``calib`` split calibrates Wanda / PTQ.
        settings: :class:`~craftlab.settings.Setting` objects, their labels (``"wanda 70%"``, ``"W4A8"``)
            or dicts of :func:`~craftlab.settings.make_setting` arguments; default :func:`settings_grid`
            (``**grid`` is passed to it).
        out: ``NAME.csv`` / ``NAME.json`` writes both files; any other path is a folder that gets
            ``sweep.csv`` and ``sweep.json``.
        extra_columns: label -> columns to add to that model's rows (e.g. optimizer, rho, seed).
        engine: ``"process"`` (default: here, one cell after another) or ``"ray"``: every (model, setting) cell
            a Ray task, fine-tuning runs one GPU each; the same table, plus ``df.attrs["cells"]`` (computed /
            cached counts) and ``df.attrs["runs"]`` (the fine-tunes it ran: path, pid, GPU ids, node).
            Finished cells are kept in ``$CRAFTLAB_HOME/sweeps``, so an interrupted Ray sweep,
            run again, computes only what is missing. ``CRAFTLAB_HOME`` must be shared by every node (checked).
        address: engine ``"ray"`` only: the cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``); default: the
            current Ray session, else ``RAY_ADDRESS``, else a local cluster started (and stopped) here. An
            unreachable address is a ConnectionError naming it, within seconds.
        keep_going: a cell that fails is left out of the table and listed in ``df.attrs["failed"]`` (model,
            setting, the error's last line) instead of stopping the sweep with
            :class:`~craftlab.distributed.cells.CellError` (a one-line message naming the model and setting).
        cpus_per_task: engine ``"ray"``: CPUs (and intra-op threads) of each cell and CPU fine-tuning task.
        gpus_per_cell: engine ``"ray"``: the share of a GPU each compression/evaluation cell asks for, which it
            then runs on (``df.attrs["placement"]`` records the device of each computed cell); default: 0.5 when
            the cluster has GPUs, else 0 (CPUs).

    Returns:
        One row per (model, setting): ``model, setting`` (its label), ``kind`` (fp / prune / quant /
        prune+quant), ``method, sparsity, pattern, w_bits, a_bits, recipe, compensation, fp_accuracy,
        accuracy, accuracy_drop, loss, size_mb, bitops, params, sparsity_measured``.

    Example::

        df = sweep({"sam": "runs/vit-sam"}, load_data("digits"), methods=["wanda"], sparsities=[0.5],
                   patterns=[], bits=[(4, 8)])                       # FP32, wanda 50%, W4A8
        df = sweep({"sam": "runs/vit-sam"}, load_data("digits"), engine="ray")   # same table, on Ray
    """
    from ..checkpoint import load_checkpoint
    from ..train.runs import RunSpec, get_run

    if engine not in ENGINES:
        raise unknown_name("sweep engine", engine, ENGINES)
    if address is not None and engine != "ray":
        raise ValueError(f"address={address!r} is for engine='ray' (the in-process engine runs here)")
    if gpus_per_cell is not None and engine != "ray":
        raise ValueError(f"gpus_per_cell={gpus_per_cell!r} is for engine='ray' (the in-process engine runs here)")
    if not isinstance(models, Mapping):
        models = {(p.key if isinstance(p, RunSpec) else str(p)): p for p in models}
    settings = [parse_setting(s) for s in settings] if settings is not None else settings_grid(**grid)
    extra = extra_columns or {}
    if engine == "ray":
        from .ray_engine import run_cells

        rows, info = run_cells(models, data, settings, split=split, progress=progress, address=address,
                               keep_going=keep_going, cpus_per_task=cpus_per_task, gpus_per_cell=gpus_per_cell)
        df = pd.DataFrame([{**row, **extra.get(row["model"], {})} for row in rows if row is not None])
        df.attrs.update(cells=info["cells"], runs=info["runs"], placement=info["placement"])
        failed = info["failed"]
    else:
        rows, failed = [], []
        bar = tqdm(total=len(models) * len(settings), desc="sweep", disable=not progress, leave=False)
        for label, m in models.items():
            if isinstance(m, RunSpec):
                m = get_run(m, progress=progress)
            model = m if isinstance(m, nn.Module) else load_checkpoint(m)
            fp = evaluate_uncompressed(model, data, split)  # once per model
            for s in settings:
                try:
                    rows.append({**compute_row(model, data, s, split, label, fp=fp), **extra.get(label, {})})
                except Exception as err:
                    failure = CellError(label, s.label(), last_line(err))
                    if not keep_going:
                        raise failure from err
                    failed.append(failure.record())
                bar.update()
        bar.close()
        df = pd.DataFrame(rows)
    df.attrs["failed"] = failed
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
