"""The Adapt view's computations (issue 13; no Gradio): frozen-backbone adaptation methods side by side — linear
probe, LoRA, full fine-tuning (± SAM), LAST and MIET — on accuracy, trainable parameters, training memory, time
per epoch and bytes sent per image.

Runs are live and cached: each (method, epochs, seed) is trained once with
:func:`craftlab.studies.adapt.compare_methods` on the zoo's vit-tiny (mnist5k-pretrained) → digits and its row is
kept under ``$CRAFTLAB_HOME/explore/adapt`` with the command that reproduces it; a row read back from there is
marked *cached*. The benchmark's table (``benchmarks/results/adapt.csv``, 8 epochs, 3 seeds:
``python -m benchmarks.run adapt``) is shown beside them as a labelled reference only when this is a source
checkout that has it (a wheel does not ship it: the live rows never depend on it).

Example::

    av = AdaptView()
    rows = av.run(["linear probe", "LAST (g=1, m=4)"], epochs=2, seeds=(0,))   # trains what is not cached
    av.summary(rows)                                                 # one row per method
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from craftlab.adapt.methods import ARMS, LAST, MIET
from craftlab.cache import atomic_write_json

__all__ = ["ARMS", "CHEAP", "METHODS", "AdaptView", "command"]

METHODS = tuple(ARMS)
"""The methods offered: :data:`craftlab.adapt.methods.ARMS`, the one table (the reference rows carry its labels)."""
CHEAP = ("linear probe", LAST, MIET)
"""Cheap on 2 CPU cores at small size (seconds per epoch on vit-tiny): the default live picks."""
REFERENCE = "adapt.csv"
"""The benchmark's table (``benchmarks/results/adapt.csv`` of a checkout: :func:`reference_path`)."""
BENCH_COMMAND = "python -m benchmarks.run adapt"
COLUMNS = ("arm", "method", "seed", "epochs", "test_accuracy", "trainable_params", "time_per_epoch_s",
           "memory_bytes", "bytes_per_image", "source", "command", "model", "data")


def command(arm: str, epochs: int, seed: int, model: str = "vit-tiny", data: str = "digits") -> str:
    """The command line that trains `arm` as the live run does (accuracy and parameters; the memory and bytes
    columns come from :func:`craftlab.studies.adapt.compare_methods`)."""
    kw = dict(ARMS[arm])
    parts = [f"craftlab adapt train --method {kw.pop('method')}", f"--epochs {epochs}", f"--seed {seed}"]
    parts += [f"--model {model}"] if model != "vit-tiny" else []
    parts += [f"--data {data}"] if data != "digits" else []
    flags = {"gap": "--gap", "bits": "--transfer-bits", "sam_rho": "--sam-rho", "cache": "--cache"}
    parts += [f"{flags[k]} {v}" for k, v in kw.items() if k in flags]
    return " ".join(parts)


def _folder() -> Path:
    from craftlab import cache

    return cache.subdir("explore") / "adapt"


class AdaptView:
    """Live, cached method comparisons (one training at a time)."""

    def __init__(self, model: str = "vit-tiny", data: str = "digits") -> None:
        self.model_name, self.data_name = model, data
        self._lock = threading.Lock()  # one training at a time; the model and data load once
        self._model = self._data = None
        self.busy: str | None = None
        """What the tab is training now (a request's tag and its current run), None when idle."""
        self._stop = threading.Event()

    def stop(self) -> bool:
        """Ask the running request to stop after its current run (one method and seed); False when idle."""
        if self.busy is None:
            return False
        self._stop.set()
        return True

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` asked the running request to stop (until :meth:`clear_stop`)."""
        return self._stop.is_set()

    def clear_stop(self) -> None:
        """Forget a stop request (a new request starts, or the stopped one ended)."""
        self._stop.clear()

    def estimate(self, methods: Sequence[str], epochs: Any, seeds: Sequence[int]) -> str:
        """How long a request would train, from the measured time per epoch of earlier live runs of each method
        (cached rows, else the benchmark's reference); what is cached costs nothing.

        Example::

            >>> AdaptView().estimate(["no such method"], 2, [0])[:2]
            '⚠ '
        """
        try:
            methods, n, seeds = self.check(methods, epochs, seeds)
        except ValueError as err:
            return f"⚠ {err}"
        per_epoch: dict[str, float] = {}
        for r in [*self.reference(), *self.cached_rows()]:  # live rows (this machine) last: they win
            t = r.get("time_per_epoch_s")
            if isinstance(t, (int, float)) and t == t and t > 0:
                per_epoch[r["arm"]] = float(t)
        todo = [m for m in methods for s in seeds if self.cached(m, n, s) is None]
        if not todo:
            return "Everything asked is cached: the table shows it at once."
        unknown = sorted({m for m in todo if m not in per_epoch})
        total = sum(per_epoch[m] * n for m in todo if m in per_epoch)
        text = f"Estimated training: about {max(1, round(total))} s for {len(todo)} run(s) not cached yet"
        if unknown:
            text += f" (plus {', '.join(unknown)}: no run measured yet)"
        return text + " (from measured times per epoch; slower while other jobs run)."

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
        slug = re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")
        return _folder() / f"{self.model_name}-{self.data_name}-{slug}-e{epochs}-s{seed}.json"

    def cached(self, method: str, epochs: int, seed: int) -> dict[str, Any] | None:
        """The cached row of (method, epochs, seed), marked as read from the cache; None when not cached."""
        return self._read(self._path(method, epochs, seed))

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(row, dict) or row.get("arm") not in ARMS:
            return None
        row.setdefault("command", command(row["arm"], row.get("epochs", 8), row.get("seed", 0)))
        return {**row, "source": "live run (cached)"}

    def cached_rows(self) -> list[dict[str, Any]]:
        """Every cached live row of this model and dataset (earlier runs of this tab), by method and seed."""
        folder = _folder()
        paths = sorted(folder.glob(f"{self.model_name}-{self.data_name}-*.json")) if folder.exists() else []
        rows = [r for r in map(self._read, paths) if r is not None]
        order = {m: i for i, m in enumerate(METHODS)}
        return sorted(rows, key=lambda r: (order[r["arm"]], r.get("epochs", 0), r.get("seed", 0)))

    def run(self, methods: Sequence[str], epochs: int = 4, seeds: Sequence[int] = (0,),
            progress: Callable[[float, str], None] | None = None, tag: str = "") -> list[dict[str, Any]]:
        """Rows of every (method, seed): cached ones at once, the others trained now (one at a time). While it
        runs, :attr:`busy` says what is training; :meth:`stop` ends it after the current run (the rows so far
        are returned)."""
        from craftlab.studies.adapt import compare_methods

        methods, epochs, seeds = self.check(methods, epochs, seeds)
        todo = [(m, s) for m in methods for s in seeds]
        rows: list[dict[str, Any]] = []
        try:
            for i, (m, s) in enumerate(todo):
                if self._stop.is_set():
                    break
                row = self.cached(m, epochs, s)
                if row is None:
                    step = f"training {m}, seed {s} ({epochs} epoch{'s' * (epochs != 1)}), run {i + 1} of {len(todo)}"
                    self.busy = f"{tag} {step}".strip()
                    if progress is not None:
                        progress(i / len(todo), step)
                    with self._lock:
                        row = self.cached(m, epochs, s)  # another request may have trained it meanwhile
                        if row is None:
                            model, data = self._load()
                            df = compare_methods(model, data, arms={m: ARMS[m]}, seeds=[s], epochs=epochs)
                            row = {k: v for k, v in df.iloc[0].to_dict().items() if k in COLUMNS}
                            row.update(epochs=epochs, model=self.model_name, data=self.data_name,
                                       command=command(m, epochs, s, self.model_name, self.data_name))
                            self._write(self._path(m, epochs, s), row)
                            row = {**json.loads(self._path(m, epochs, s).read_text()), "source": "live run (now)"}
                rows.append(row)
        finally:
            self.busy = None  # idle again (also after a failure)
        return rows

    @staticmethod
    def _write(path: Path, row: dict[str, Any]) -> None:
        atomic_write_json(path, {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})

    @staticmethod
    def reference() -> list[dict[str, Any]]:
        """The benchmark's rows (8 epochs, 3 seeds), when this checkout has ``benchmarks/results/adapt.csv``."""
        path = reference_path()
        if path is None:
            return []
        import pandas as pd

        df = pd.read_csv(path)
        df = df.assign(epochs=8, source="benchmark (reference)", command=BENCH_COMMAND)
        return [{k: v for k, v in r.items() if k in COLUMNS} for r in df.to_dict("records")]

    @staticmethod
    def summary(rows: Sequence[dict[str, Any]]) -> Any:
        """One row per (live / benchmark, method, epochs): mean ± sd test accuracy over seeds, the per-method
        costs, where the numbers come from (trained now, read from the cache, the benchmark) and the command."""
        import pandas as pd

        cols = ["source", "method", "epochs", "seeds", "test accuracy (%)", "± sd", "trainable params",
                "training memory (MB)", "s / epoch", "bytes / image", "command"]
        if not rows:
            return pd.DataFrame(columns=cols)
        df = pd.DataFrame(rows)
        df["kind"] = ["benchmark" if str(x).startswith("benchmark") else "live" for x in df["source"]]
        out = []
        for (kind, arm, epochs), g in df.groupby(["kind", "arm", "epochs"], sort=False):
            seeds = sorted(g["seed"].unique().tolist())
            if kind == "live":
                n_now = int((g["source"] == "live run (now)").sum())
                parts = [f"{n_now} trained now"] * bool(n_now) + [f"{len(g) - n_now} cached"] * bool(len(g) - n_now)
                source = f"live run ({', '.join(parts)})"
                cmd = str(g["command"].iloc[0])
                if len(seeds) > 1:
                    cmd = (cmd.replace(f"--seed {g['seed'].iloc[0]}", "--seed S")
                           + f"  (S = {', '.join(map(str, seeds))})")
            else:
                source, cmd = g["source"].iloc[0], g["command"].iloc[0]
            acc = g["test_accuracy"]
            out.append({"source": source, "method": arm, "epochs": int(epochs), "seeds": len(seeds),
                        "test accuracy (%)": round(100 * acc.mean(), 1),
                        "± sd": round(100 * acc.std(), 1) if len(acc) > 1 else None,
                        "trainable params": int(g["trainable_params"].iloc[0]),
                        "training memory (MB)": round(g["memory_bytes"].iloc[0] / 1e6, 2),
                        "s / epoch": round(g["time_per_epoch_s"].mean(), 2),
                        "bytes / image": int(g["bytes_per_image"].iloc[0]), "command": cmd})
        return pd.DataFrame(out, columns=cols)


def reference_path() -> Path | None:
    """The checkout's ``benchmarks/results/adapt.csv`` (found by the core, as the claims ledger is:
    :func:`craftlab.analysis.ledger.results_file`), None where there is none (an installed wheel)."""
    from craftlab.analysis.ledger import results_file

    return results_file(REFERENCE)
