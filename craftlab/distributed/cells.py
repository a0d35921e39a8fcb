"""One sweep cell — a (model, compression setting) pair -> one table row — with its content key and store.

Both sweep engines build their rows here (:func:`compute_row`), so the in-process table and Ray's are made by
the same code. The Ray engine also keys every cell by *what* it computes — the model's weights (a checkpoint's
SHA-256, a module's tensors, or a :class:`~craftlab.train.runs.RunSpec`), the data, the split and the setting —
and keeps each finished row in ``$CRAFTLAB_HOME/sweeps/cells/<key>.json`` (written atomically by the worker
that computed it): a sweep killed half-way, run again, computes only the cells that have no row yet.

Example::

    >>> from craftlab.settings import make_setting
    >>> cell_key("weights:abc", "data:def", "test", make_setting("wanda", 0.5)) == \\
    ...     cell_key("weights:abc", "data:def", "test", make_setting("wanda", 0.5))
    True
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from ..cache import atomic_write_json, file_sha256, fingerprint, read_json
from ..settings import Setting

CELL_FORMAT = 2  # 2: recalibrate_bn also re-estimates after quantization (one BN protocol, issue 19)
"""Bump when a row's content changes meaning: older stored rows are then not reused."""

CODE_FILES = ("compression", "evaluation.py", "settings.py", "distributed/cells.py")
"""The package's sources that compute a row (relative to the package folder): their content is part of every cell
key (:func:`code_version`), so after an upgrade or an edit the Ray engine recomputes, as the in-process one does."""


@functools.cache
def code_version(root: str | None = None, files: tuple[str, ...] = CODE_FILES) -> str:
    """SHA-256 (16 hex digits) of the craftlab version and the ``.py`` sources in `files` under `root` (default:
    the installed package), in a fixed order. Example::

        >>> len(code_version())
        16
    """
    from .. import __version__

    base = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    parts = []
    for name in files:
        p = base / name
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            parts.append(f.relative_to(base).as_posix().encode() + b"\0" + f.read_bytes())
    return fingerprint(b"".join(parts), salt=__version__)[:16]


def kind(s: Setting) -> str:
    """``fp``, ``prune``, ``quant`` or ``prune+quant``."""
    return {(False, False): "fp", (True, False): "prune", (False, True): "quant"}.get((s.prunes, s.quantizes),
                                                                                       "prune+quant")


def evaluate_uncompressed(model: Any, data: Any, split: str) -> dict[str, Any]:
    """`model`'s accuracy and loss on `split` of `data`, uncompressed: what every row of the model shares."""
    from ..evaluation import evaluate

    return evaluate(model, data.loader(split))


def cell_device(gpu_ids: list[str], cuda_available: bool) -> str:
    """Where a cell runs: ``"cuda"`` when Ray gave its task a GPU (`gpu_ids`, which Ray also makes the process's
    only visible device) and CUDA works here, else ``"cpu"`` (a GPU resource without a usable CUDA device — a
    fake-GPU test cluster, a driver-less node — falls back to the CPU; the sweep records which).

    Example::

        >>> cell_device(["0"], True), cell_device(["0"], False), cell_device([], True)
        ('cuda', 'cpu', 'cpu')
    """
    return "cuda" if gpu_ids and cuda_available else "cpu"


def check_gpus_per_cell(gpus: float | None) -> None:
    """Refuse a GPU share per cell that is not None (automatic) or a number in [0, 1] (Ray gives a task a
    fraction of one GPU, or whole GPUs; a cell needs at most one).

    Example::

        >>> check_gpus_per_cell(1.5)
        Traceback (most recent call last):
        ValueError: gpus_per_cell must be between 0 and 1 (a share of one GPU; None: automatic), got 1.5
    """
    ok = gpus is None or (isinstance(gpus, (int, float)) and not isinstance(gpus, bool) and 0 <= gpus <= 1)
    if not ok:
        raise ValueError(f"gpus_per_cell must be between 0 and 1 (a share of one GPU; None: automatic), got {gpus!r}")


def compute_row(model: Any, data: Any, setting: Setting, split: str, label: str,
                fp: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sweep table's row of `model` (labelled `label`) under `setting`, evaluated on `split` of `data`;
    `fp`: :func:`evaluate_uncompressed` of the model when already known (once per model, not per setting)."""
    from ..compression.pipeline import compress_and_evaluate

    s = setting
    res = compress_and_evaluate(model, data, split=split, setting=s, fp=fp)
    return {"model": label, "setting": s.label(), "kind": kind(s),
            "method": s.nm_score if s.method == "N:M" else (s.method if s.prunes else None),
            "sparsity": s.sparsity, "pattern": s.pattern, "w_bits": s.w_bits, "a_bits": s.a_bits,
            "recipe": s.recipe, "compensation": s.compensation,
            **{k: res[k] for k in ("fp_accuracy", "accuracy", "accuracy_drop", "loss", "size_mb",
                                   "bitops", "params", "sparsity_measured")}}


class CellError(RuntimeError):
    """A sweep cell failed: the message names the model and the setting, then the error's last line."""

    def __init__(self, model: str, setting: str, error: str):
        super().__init__(f"sweep cell (model {model!r}, setting {setting!r}) failed: {error} -- pass keep_going=True "
                         "(CLI: --keep-going) to skip failing cells and list them at the end")
        self.model, self.setting, self.error = model, setting, error

    def record(self) -> dict[str, str]:
        """The row of the failures table: ``model, setting, error``."""
        return {"model": self.model, "setting": self.setting, "error": self.error}


def model_id(model: Any) -> str:
    """What a model's rows depend on: ``run:<key>`` for a RunSpec, ``weights:<sha256>`` for a checkpoint folder
    (its sidecar's hash, so a moved folder keeps its cells), ``module:<sha256>`` of a module's tensors."""
    from torch import nn

    from ..checkpoint import read_meta
    from ..train.runs import RunSpec

    if isinstance(model, RunSpec):
        return f"run:{model.key}:{fingerprint(model.record())[:16]}"
    if isinstance(model, nn.Module):
        return f"module:{fingerprint(model, salt=type(model).__name__)}"
    meta = read_meta(model)
    return "weights:" + (meta.get("weights_sha256") or file_sha256(Path(model) / "model.safetensors"))


def data_id(data: Any, split: str) -> str:
    """What the rows depend on in `data`: its description and a hash of the first batch of `split` and of the
    calibration split (two bundles built from different tensors under one name get different ids)."""
    import torch

    first = {}
    for name in (split, "calib"):
        x, y = next(iter(data.loader(name, shuffle=False)))
        first[f"{name}.x"], first[f"{name}.y"] = x, y.to(torch.int64)
    return f"data:{fingerprint(first, salt=json.dumps(data.describe(), sort_keys=True, default=str))}"


def cell_key(model: str, data: str, split: str, setting: Setting) -> str:
    """The store key of one cell (ids from :func:`model_id` and :func:`data_id`), with the code version."""
    return fingerprint({"format": CELL_FORMAT, "code": code_version(), "model": model, "data": data, "split": split,
                 "setting": setting.as_dict()})[:32]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


class CellStore:
    """Finished rows, one JSON file per cell key, under `root` (default ``$CRAFTLAB_HOME/sweeps/cells``).

    Example::

        >>> import tempfile
        >>> store = CellStore(tempfile.mkdtemp())
        >>> store.put("k1", {"model": "a", "accuracy": 0.5}); store.get("k1", label="b")
        {'model': 'b', 'accuracy': 0.5}
    """

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            from .. import cache

            root = cache.home() / "sweeps" / "cells"
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str, label: str | None = None) -> dict[str, Any] | None:
        """The stored row of `key` (its ``model`` column set to `label`), or None when there is none."""
        row = read_json(self.path(key))
        if row is None:
            return None
        if label is not None:
            row["model"] = label
        return row

    def put(self, key: str, row: dict[str, Any]) -> None:
        """Write `row` atomically (:func:`craftlab.cache.atomic_write`): a killed writer leaves no half-written row."""
        atomic_write_json(self.path(key), {k: _plain(v) for k, v in row.items()})
