"""The Adapt view's computations (issue 13; no Gradio): frozen-backbone adaptation methods side by side — linear
probe, LoRA, full fine-tuning (± SAM), LAST and MIET — on accuracy, trainable parameters, training memory, time
per epoch and bytes sent per image.

Runs are live and cached: each (method, epochs, seed) is trained once with
:func:`craftlab.adapt.compare.compare_methods` on the zoo's vit-tiny (mnist5k-pretrained) → digits and its row is
kept under ``$CRAFTLAB_HOME/explore/adapt``. The benchmark's table (``benchmarks/results/adapt.csv``, 8 epochs,
3 seeds: ``python -m benchmarks.run adapt``) is shown beside them as a labelled reference when this is a source
checkout that has it.

Example::

    av = AdaptView()
    rows = av.run(["linear probe", "LAST"], epochs=2, seeds=(0,))   # trains what is not cached
    av.summary(rows)                                                 # one row per method
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["METHODS", "AdaptView"]

METHODS = ("linear probe", "LoRA", "full", "full + SAM", "LAST", "MIET")
"""The compared methods (:data:`craftlab.adapt.compare.ARMS`)."""
REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "adapt.csv"
COLUMNS = ("arm", "method", "seed", "epochs", "test_accuracy", "trainable_params", "time_per_epoch_s",
           "memory_bytes", "bytes_per_image", "source")


def _folder() -> Path:
    from craftlab import cache

    return cache.subdir("explore") / "adapt"


class AdaptView:
    """Live, cached method comparisons (one training at a time)."""

    def __init__(self, model: str = "vit-tiny", data: str = "digits") -> None:
        self.model_name, self.data_name = model, data
        self._lock = threading.Lock()  # one training at a time; the model and data load once
        self._model = self._data = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import craftlab

            data = craftlab.load_data(self.data_name)
            self._model = craftlab.create_model(self.model_name, num_classes=data.num_classes, progress=False)
            self._data = data
        return self._model, self._data

    @staticmethod
    def check(methods: Sequence[str], epochs: Any, seeds: Sequence[int]) -> tuple[list[str], int, list[int]]:
        """Validate a request (ValueError naming the problem)."""
        methods = [str(m) for m in (methods or [])]
        if not methods:
            raise ValueError("choose at least one method")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        try:
            n = int(epochs)
        except (TypeError, ValueError):
            raise ValueError(f"epochs must be a whole number from 1 to 30, got {epochs!r}") from None
        if not 1 <= n <= 30 or n != float(epochs):
            raise ValueError(f"epochs must be a whole number from 1 to 30, got {epochs!r}")
        seeds = [int(s) for s in seeds]
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
        return methods, n, seeds

    def _path(self, method: str, epochs: int, seed: int) -> Path:
        slug = method.lower().replace(" + ", "-").replace(" ", "-")
        return _folder() / f"{self.model_name}-{self.data_name}-{slug}-e{epochs}-s{seed}.json"

    def cached(self, method: str, epochs: int, seed: int) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(method, epochs, seed).read_text())
        except (OSError, ValueError):
            return None

    def run(self, methods: Sequence[str], epochs: int = 4, seeds: Sequence[int] = (0,),
            progress: Callable[[float, str], None] | None = None) -> list[dict[str, Any]]:
        """Rows of every (method, seed): cached ones at once, the others trained now (one at a time)."""
        from craftlab.adapt.compare import ARMS, compare_methods

        methods, epochs, seeds = self.check(methods, epochs, seeds)
        todo = [(m, s) for m in methods for s in seeds]
        rows = []
        for i, (m, s) in enumerate(todo):
            row = self.cached(m, epochs, s)
            if row is None:
                if progress is not None:
                    progress(i / len(todo), f"training {m}, seed {s} ({epochs} epochs)")
                with self._lock:
                    row = self.cached(m, epochs, s)  # another request may have trained it meanwhile
                    if row is None:
                        model, data = self._load()
                        df = compare_methods(model, data, arms={m: ARMS[m]}, seeds=[s], epochs=epochs)
                        row = {k: v for k, v in df.iloc[0].to_dict().items() if k in COLUMNS}
                        row.update(epochs=epochs, source="live run (cached)")
                        self._write(self._path(m, epochs, s), row)
            rows.append(row)
        return rows

    @staticmethod
    def _write(path: Path, row: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}, f)
        os.replace(tmp, path)

    @staticmethod
    def reference() -> list[dict[str, Any]]:
        """The benchmark's rows (8 epochs, 3 seeds), when this checkout has ``benchmarks/results/adapt.csv``."""
        if not REFERENCE.exists():
            return []
        import pandas as pd

        df = pd.read_csv(REFERENCE)
        df = df.assign(epochs=8, source="benchmark: python -m benchmarks.run adapt")
        return [{k: v for k, v in r.items() if k in COLUMNS} for r in df.to_dict("records")]

    @staticmethod
    def summary(rows: Sequence[dict[str, Any]]) -> Any:
        """One row per (source, method): mean ± sd test accuracy over seeds and the per-method costs."""
        import pandas as pd

        if not rows:
            return pd.DataFrame(columns=["source", "method", "epochs", "seeds", "test accuracy (%)", "± sd",
                                         "trainable params", "training memory (MB)", "s / epoch", "bytes / image"])
        df = pd.DataFrame(rows)
        g = df.groupby(["source", "arm", "epochs"], sort=False)
        out = g.agg(seeds=("seed", "nunique"), acc=("test_accuracy", "mean"), sd=("test_accuracy", "std"),
                    params=("trainable_params", "first"), mem=("memory_bytes", "first"),
                    sec=("time_per_epoch_s", "mean"), sent=("bytes_per_image", "first")).reset_index()
        return pd.DataFrame({"source": out["source"], "method": out["arm"], "epochs": out["epochs"],
                             "seeds": out["seeds"], "test accuracy (%)": (100 * out["acc"]).round(1),
                             "± sd": (100 * out["sd"]).round(1), "trainable params": out["params"],
                             "training memory (MB)": (out["mem"] / 1e6).round(2), "s / epoch": out["sec"].round(2),
                             "bytes / image": out["sent"]})
