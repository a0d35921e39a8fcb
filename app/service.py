"""Interactive exploration: a plain fine-tuned model and its CrAFT (SAM) twin under pruning and quantization.

:class:`Explorer` is what the CraftLab app (and a notebook) calls. For a *model* (a zoo name, a timm
name, or the key of a cached run) it resolves the two fine-tuning **arms** — the plain run and its SAM
twin, same schedule and seed — fine-tuning whichever is not cached yet, and answers:

* :meth:`Explorer.compress`: full-precision and compressed test accuracy of both arms for one setting;
* :meth:`Explorer.curves`: accuracy-vs-sparsity and accuracy-vs-bits curves (computed once per model
  in the background, persisted under ``$CRAFTLAB_HOME/explore``);
* :meth:`Explorer.sharpness`: λmax, Hessian trace and ε-sharpness of both full-precision arms;
* :meth:`Explorer.landscape`: the loss along the compression direction ``w + t (C(w) − w)`` and on the
  plane it spans with a random direction, the compressed point marked;
* :meth:`Explorer.train_specs` / :meth:`Explorer.train_stream`: fine-tune runs (a run and its twin) with
  live history.

Everything is cached and keyed by every input that matters: the checkpoint's content hash, the data
the numbers are measured on, and the normalized compression :class:`Setting`. Caches are bounded LRUs
and computations are *single-flight*: concurrent callers asking for the same thing share one
computation. Shared models are never mutated: compression works on copies (``craftlab.compress``
returns a new model) and every probe runs on a private deep copy, so any number of threads may call an
Explorer at once.

Speed notes (2 CPU cores): a point (compress + evaluate on the 359-image digits test split) takes
0.05-0.25 s with one intra-op thread; the two arms are computed in parallel threads. On a busy machine,
PyTorch's default multi-threaded kernels can be 10-20x slower than one thread (the OpenMP workers
spin against other processes), which is why the app runs with ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from craftlab import cache
from craftlab._errors import check_sparsity, unknown_name
from craftlab.checkpoint import SIDECAR, WEIGHTS, CheckpointError, load_checkpoint, read_meta
from craftlab.settings import DEFAULT_SETTING, Setting, make_setting, parse_bits
from craftlab.train.runs import RunSpec, list_runs, run_dir

__all__ = [
    "BITS_GRID",
    "DEFAULT_SETTING",
    "PRUNE_METHODS",
    "SPARSITY_GRID",
    "Arm",
    "Explorer",
    "Setting",
    "make_setting",
]

PRUNE_METHODS = ("magnitude", "wanda", "N:M")
"""Pruning methods offered: unstructured magnitude (global), Wanda (per row), N:M semi-structured."""
SPARSITY_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Sparsities of the accuracy-vs-sparsity curves (0.05 ... 0.95; 0 is the full-precision point)."""
BITS_GRID = (8, 7, 6, 5, 4, 3, 2)
"""Bit-widths of the accuracy-vs-bits curves."""
MAX_STORED_LANDSCAPES = 256
"""Landscapes kept on disk (oldest dropped first); each is a few tens of KB."""
EVAL_VERSION = 1
"""Bump when the way points are measured changes (invalidates the on-disk point caches)."""
OPTIMIZER_LABELS = {"adamw": "AdamW", "sgd": "SGD"}
Progress = Callable[[float, str], None]
_TRAIN_LOCK = threading.Lock()
"""Fine-tuning runs in one process take turns: they seed torch's process-wide RNG (head initialisation,
dropout), so two runs in parallel threads would draw from one stream in a racy order and a cached run
would no longer be what its settings say."""


# ----------------------------------------------------------------------------------------------
# small thread-safe building blocks


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class _Memo:
    """A bounded LRU whose misses are computed once even when many threads ask at the same time."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._inflight: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return default

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._put(key, value)

    def _put(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def with_prefix(self, prefix: tuple) -> dict[Any, Any]:
        """{rest of key: value} of the tuple keys starting with `prefix` (one element left after it)."""
        n = len(prefix)
        with self._lock:
            return {k[n]: v for k, v in self._data.items()
                    if isinstance(k, tuple) and len(k) == n + 1 and k[:n] == prefix}

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            flight = self._inflight.get(key)
            leader = flight is None
            if leader:
                flight = self._inflight[key] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = fn()
            with self._lock:
                self._put(key, flight.value)
            return flight.value
        except BaseException as err:
            flight.error = err
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            flight.done.set()


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# arms


@dataclass(frozen=True)
class Arm:
    """One fine-tuning arm of a model: ``role`` ``"plain"`` (the optimizer alone) or ``"craft"`` (+ SAM).

    ``spec`` says how to (re)build it with :func:`craftlab.get_run`; ``path`` is a fixed checkpoint
    folder (a cached run chosen by its key), ``None`` when the arm is ``run_dir(spec)``.
    """

    role: str
    name: str
    label: str
    spec: RunSpec | None
    path: str | None = None

    @property
    def checkpoint(self) -> Path:
        return Path(self.path) if self.path else run_dir(self.spec)  # type: ignore[arg-type]


def _arm_label(spec: RunSpec) -> str:
    opt = OPTIMIZER_LABELS.get(spec.optimizer, spec.optimizer)
    if spec.sam_rho == 0:
        return opt
    return f"CrAFT: {opt} + {'ASAM' if spec.adaptive else 'SAM'} ρ={spec.sam_rho:g}"


def _arm(spec: RunSpec, path: str | None = None) -> Arm:
    return Arm("craft" if spec.sam_rho > 0 else "plain", spec.arm, _arm_label(spec), spec, path)


def _spec_from_meta(meta: dict[str, Any]) -> RunSpec | None:
    run = meta.get("run")
    if not isinstance(run, dict):
        return None
    names = {f.name for f in fields(RunSpec)}
    try:
        return RunSpec(**{k: v for k, v in run.items() if k in names})
    except TypeError:
        return None


@dataclass
class _Context:
    """The data an arm is measured on: test tensors, calibration batches, a fixed probe batch."""

    key: str
    data_name: str
    test: list[tuple[torch.Tensor, torch.Tensor]]
    calib: list[tuple[torch.Tensor, torch.Tensor]]
    probe: list[tuple[torch.Tensor, torch.Tensor]]
    example: torch.Tensor


@dataclass
class _Loaded:
    """A loaded arm: the shared (read-only) model, its content fingerprint and its data context."""

    arm: Arm
    path: Path
    fingerprint: str
    model: nn.Module
    ctx: _Context
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def point_prefix(self) -> tuple[str, str]:
        return (self.fingerprint, self.ctx.key)


@dataclass
class _RunJob:
    spec: RunSpec
    history: list[dict[str, float]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    path: Path | None = None
    error: BaseException | None = None
    running: bool = False

    def describe(self) -> str:
        where = f"epoch {len(self.history)}/{self.spec.epochs}" if self.running else "queued"
        return f"{self.spec.model} [{_arm_label(self.spec)}] {where}"


# ----------------------------------------------------------------------------------------------
# the explorer


class Explorer:
    """Cached, thread-safe sweeps and probes over the two fine-tuning arms of a model.

    Args:
        epochs: fine-tuning epochs of the arms of a zoo / timm model (the runs ``craftlab demo`` makes).
        sam_rho: ρ of the CrAFT twin (and of the ε-sharpness probe).
        data: dataset the arms of a zoo / timm model are fine-tuned and measured on.
        seed: run seed.
        sparsity_grid, bits_grid: the grids of the accuracy curves.
        probe_size: images in the fixed probe batch (the first training images) used by sharpness and
            landscape probes.
        landscape_steps, path_steps, landscape_distance: resolution and extent of the landscapes.
        max_models, max_points, max_landscapes: bounds of the in-memory caches.
        persist: keep curve points and sharpness numbers under ``$CRAFTLAB_HOME/explore``.
        workers: threads computing the arms of one request in parallel.
    """

    def __init__(self, epochs: int = 8, sam_rho: float = 0.05, data: str = "digits", seed: int = 0,
                 sparsity_grid: Sequence[float] = SPARSITY_GRID, bits_grid: Sequence[int] = BITS_GRID,
                 probe_size: int = 128, landscape_steps: int = 11, path_steps: int = 21,
                 landscape_distance: float = 1.5, max_models: int = 8, max_points: int = 50_000,
                 max_landscapes: int = 32, persist: bool = True, workers: int = 2) -> None:
        if not (isinstance(epochs, int) and epochs >= 1):
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if not sam_rho > 0:
            raise ValueError(f"sam_rho of the CrAFT twin must be > 0, got {sam_rho!r}")
        self.epochs, self.sam_rho, self.data, self.seed = epochs, float(sam_rho), data, seed
        self.sparsity_grid = tuple(float(check_sparsity(s)) for s in sparsity_grid)
        self.bits_grid = tuple(int(parse_bits(b, "bits_grid")) for b in bits_grid)
        self.probe_size = int(probe_size)
        self.landscape_steps, self.path_steps = int(landscape_steps), int(path_steps)
        self.landscape_distance = float(landscape_distance)
        self.persist = persist
        self._models = _Memo(max_models)
        self._contexts = _Memo(4)
        self._points = _Memo(max_points)
        self._landscapes = _Memo(max_landscapes)
        self._sharpness = _Memo(max(4 * max_models, 16))
        self._fingerprints: dict[tuple, str] = {}
        self._lock = threading.RLock()
        self._runs: dict[str, _RunJob] = {}
        self._loaded_stores: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="craftlab-explore")
        # background work (curve points, warm-up), paused while foreground requests run
        self._busy = 0
        self._idle = threading.Event()
        self._idle.set()
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._queued: set[Hashable] = set()
        self._seq = itertools.count()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._warm_state: dict[str, Any] = {"stage": "idle", "models": [], "error": None}

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """fn over items: in parallel on the pool for a request, sequentially in the (low-priority) worker."""
        if len(items) <= 1 or threading.current_thread() is self._worker:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    # ------------------------------------------------------------------ models and arms

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a model picker: the zoo (both arms), then every cached run."""
        from craftlab.models import zoo_names

        out = [(f"{z} (AdamW vs CrAFT)", z) for z in zoo_names()]
        for r in list_runs():
            acc = r.get("test_accuracy")
            out.append((f"{r['key']}" + (f" ({acc:.1%})" if isinstance(acc, float) else ""), r["key"]))
        return out

    def _run_keys(self) -> set[str]:
        root = cache.home() / "runs"
        if not root.exists():
            return set()
        return {p.name for p in root.iterdir() if p.is_dir() and (p / SIDECAR).exists()}

    def resolve(self, model: str) -> list[Arm]:
        """The arms of `model` (plain first), without building anything. Raises ValueError for an unknown name.

        * a zoo or timm name: ``RunSpec(model, data, epochs, sam_rho=0)`` and its twin with ``sam_rho``;
        * the key of a cached run (see :func:`craftlab.list_runs`): that checkpoint, and its twin
          (the same run with ρ = 0, or with the explorer's ρ when the run itself is plain).
        """
        from craftlab.models import is_known_model, zoo_names

        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a zoo name, a cached run or a timm name, got {model!r}")
        name = model.strip()
        if name in self._run_keys():
            path = cache.home() / "runs" / name
            meta = read_meta(path)  # CheckpointError names a damaged sidecar
            spec = _spec_from_meta(meta)
            if spec is None:  # a checkpoint without run metadata: one arm
                rho = float(meta.get("sam_rho") or 0.0)
                role = "craft" if rho > 0 else "plain"
                return [Arm(role, str(meta.get("arm") or name), name, None, str(path))]
            twin = (replace(spec, sam_rho=0.0, adaptive=False) if spec.sam_rho > 0
                    else replace(spec, sam_rho=self.sam_rho, adaptive=False))
            arms = [_arm(spec, str(path)), _arm(twin)]
            return sorted(arms, key=lambda a: a.role != "plain")
        if name in zoo_names() or is_known_model(name):
            base = RunSpec(model=name, data=self.data, epochs=self.epochs, seed=self.seed)
            return [_arm(base), _arm(replace(base, sam_rho=self.sam_rho))]
        import difflib

        from craftlab.models import _timm_names

        choices = [*zoo_names(), *sorted(self._run_keys())]
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        if not close:
            close = difflib.get_close_matches(name, _timm_names(), n=3, cutoff=0.6)
        raise unknown_name("model", name, choices, suggestions=close,
                           hint="use a zoo model (" + ", ".join(zoo_names()) + "), the key of a cached run, "
                                "or a timm model name")

    def _fingerprint(self, path: Path) -> str:
        w, s = path / WEIGHTS, path / SIDECAR
        try:
            sw, ss = w.stat(), s.stat()
        except FileNotFoundError as err:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {Path(err.filename).name}") from None
        key = (str(path), sw.st_mtime_ns, sw.st_size, ss.st_mtime_ns, ss.st_size)
        with self._lock:
            fp = self._fingerprints.get(key)
        if fp is None:
            h = hashlib.sha1(w.read_bytes())
            h.update(json.dumps(read_meta(path).get("architecture")).encode())
            fp = h.hexdigest()
            with self._lock:
                if len(self._fingerprints) > 256:
                    self._fingerprints.clear()
                self._fingerprints[key] = fp
        return fp

    def _context(self, data_name: str, model: nn.Module) -> _Context:
        from craftlab.data import load_data
        from craftlab.models import input_config

        cfg = input_config(model)
        ckey = json.dumps([data_name, list(cfg.get("input_size", [])), list(cfg.get("mean", [])),
                           list(cfg.get("std", [])), EVAL_VERSION])

        def build() -> _Context:
            data = load_data(data_name, model=model)

            def tensors(loader: Any, limit: int | None = None, chunk: int = 512) -> list[tuple[Any, Any]]:
                xs, ys, n = [], [], 0
                for x, y in loader:
                    xs.append(x)
                    ys.append(y)
                    n += len(y)
                    if limit is not None and n >= limit:
                        break
                x, y = torch.cat(xs), torch.cat(ys)
                if limit is not None:
                    x, y = x[:limit], y[:limit]
                return [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(y), chunk)]

            test = tensors(data.test)
            probe = tensors(data.loader("train", shuffle=False), limit=self.probe_size)
            return _Context(hashlib.sha1(ckey.encode()).hexdigest()[:16], data_name, test, tensors(data.calib),
                            probe, test[0][0][:1])

        return self._contexts.get_or_compute(ckey, build)

    def _load(self, arm: Arm) -> _Loaded:
        path = arm.checkpoint
        fp = self._fingerprint(path)

        def build() -> _Loaded:
            model = load_checkpoint(path)
            model.requires_grad_(False)
            meta = getattr(model, "craftlab_meta", {})
            data_name = (arm.spec.data if arm.spec is not None else (meta.get("data") or {}).get("name")) or self.data
            ctx = self._context(data_name, model)
            return _Loaded(arm, path, fp, model, ctx, meta)

        loaded = self._models.get_or_compute(fp, build)
        if loaded.arm != arm or loaded.path != path:  # same weights reached under another name
            loaded = replace(loaded, arm=arm, path=path)
        self._load_store(loaded)
        return loaded

    def arms(self, model: str, progress: Progress | None = None) -> list[_Loaded]:
        """Load (fine-tuning first when needed) the arms of `model`; progress(fraction, text) while training."""
        arms = self.resolve(model)
        missing = [a for a in arms if a.path is None and not self._is_cached(a.spec)]
        if missing:
            self.train_specs([a.spec for a in missing], progress=progress)  # type: ignore[misc]
        return self._map(self._load, arms)

    # ------------------------------------------------------------------ fine-tuning runs

    @staticmethod
    def _is_cached(spec: RunSpec | None) -> bool:
        if spec is None:
            return True
        try:
            read_meta(run_dir(spec))
            return True
        except ValueError:
            return False

    def _start_run(self, spec: RunSpec) -> _RunJob:
        from craftlab.train.runs import get_run

        _check_hub(spec.model)

        with self._lock:
            job = self._runs.get(spec.key)
            if job is not None and (not job.done.is_set() or job.error is None):
                return job
            job = self._runs[spec.key] = _RunJob(spec)

        def work() -> None:
            try:
                with _TRAIN_LOCK:  # one at a time: runs seed torch's process-wide RNG (see _TRAIN_LOCK)
                    job.running = True
                    job.path = get_run(spec, progress=False, callback=job.history.append)
            except BaseException as err:  # reported to every waiter
                job.error = err
            finally:
                job.done.set()

        threading.Thread(target=work, name=f"craftlab-run-{spec.key}", daemon=True).start()
        return job

    def train_specs(self, specs: Sequence[RunSpec], progress: Progress | None = None) -> list[Path]:
        """Fine-tune the uncached `specs` (one after the other, each once even if asked for concurrently);
        their checkpoint folders."""
        jobs = [None if self._is_cached(s) else self._start_run(s) for s in specs]
        live = [j for j in jobs if j is not None]
        while live and not all(j.done.is_set() for j in live):
            if progress is not None:
                total = sum(j.spec.epochs for j in live)
                done = sum(len(j.history) for j in live)
                desc = ", ".join(j.describe() for j in live if not j.done.is_set())
                progress(done / max(total, 1), f"fine-tuning {desc}")
            time.sleep(0.2)
        for j in live:
            if j.error is not None:
                raise j.error
        return [run_dir(s) for s in specs]

    def train_stream(self, spec: RunSpec, twin: bool = True, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Fine-tune `spec` (and, with `twin`, its plain / SAM twin); yield the live state every `poll` s.

        Each yielded dict has ``runs``: a list of ``{"key", "label", "epochs", "history", "done", "cached"}``
        and ``done``. Cached runs report the history stored in their checkpoint. Raises what training raises.
        """
        from craftlab.data import dataset_names
        from craftlab.models import is_known_model

        if not is_known_model(spec.model):
            self.resolve(spec.model)  # raises the unknown-model message
        if spec.data not in dataset_names() and not str(spec.data).startswith("imagefolder:"):
            raise unknown_name("dataset", spec.data, dataset_names())
        if not (isinstance(spec.epochs, int) and 1 <= spec.epochs <= 200):
            raise ValueError(f"epochs must be an integer in [1, 200], got {spec.epochs!r}")
        if not 0 <= spec.sam_rho <= 10:
            raise ValueError(f"rho must be in [0, 10], got {spec.sam_rho!r}")
        if spec.adaptive and spec.sam_rho == 0:
            raise ValueError("ASAM (adaptive) needs rho > 0")
        specs = [spec]
        if twin:
            other = (replace(spec, sam_rho=0.0, adaptive=False) if spec.sam_rho > 0
                     else replace(spec, sam_rho=self.sam_rho))
            specs = sorted([spec, other], key=lambda s: s.sam_rho > 0)
        jobs: dict[str, _RunJob | None] = {s.key: None if self._is_cached(s) else self._start_run(s) for s in specs}

        def state() -> dict[str, Any]:
            runs = []
            for s in specs:
                job = jobs[s.key]
                if job is None:
                    meta = read_meta(run_dir(s))
                    runs.append({"key": s.key, "label": _arm_label(s), "epochs": s.epochs,
                                 "history": list(meta.get("history") or []), "done": True, "cached": True,
                                 "test_accuracy": (meta.get("metrics") or {}).get("test_accuracy")})
                else:
                    test_acc = None
                    if job.done.is_set() and job.error is None:
                        test_acc = (read_meta(run_dir(s)).get("metrics") or {}).get("test_accuracy")
                    runs.append({"key": s.key, "label": _arm_label(s), "epochs": s.epochs,
                                 "history": list(job.history), "done": job.done.is_set(), "cached": False,
                                 "running": job.running, "test_accuracy": test_acc})
            return {"runs": runs, "done": all(r["done"] for r in runs), "key": spec.key}

        while True:
            for j in jobs.values():
                if j is not None and j.error is not None:
                    raise j.error
            st = state()
            yield st
            if st["done"]:
                return
            time.sleep(poll)

    # ------------------------------------------------------------------ points (accuracy of one setting)

    def _foreground(self) -> _ForegroundGuard:
        return _ForegroundGuard(self)

    def _store_path(self, prefix: tuple[str, str]) -> Path:
        return cache.subdir("explore") / f"points-{prefix[0][:20]}-{prefix[1]}.json"

    def _load_store(self, loaded: _Loaded) -> None:
        prefix = loaded.point_prefix
        with self._lock:
            if not self.persist or prefix in self._loaded_stores:
                return
            self._loaded_stores.add(prefix)
        path = self._store_path(prefix)
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(stored, dict) or stored.get("version") != EVAL_VERSION:
            return
        for k, v in (stored.get("points") or {}).items():
            if isinstance(v, dict) and "accuracy" in v:
                self._points.put((*prefix, k), v)
        sharp = stored.get("sharpness")
        if isinstance(sharp, dict) and "lambda_max" in sharp:
            self._sharpness.put(prefix, sharp)

    def flush(self) -> None:
        """Write the dirty on-disk point stores now (the background worker also does this when idle)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for prefix in dirty:
            obj = {"version": EVAL_VERSION, "points": self._points.with_prefix(prefix)}
            sharp = self._sharpness.get(prefix)
            if sharp is not None:
                obj["sharpness"] = sharp
            try:
                _atomic_write_json(self._store_path(prefix), obj)
            except OSError:
                pass

    def _mark_dirty(self, prefix: tuple[str, str]) -> None:
        if self.persist:
            with self._lock:
                self._dirty.add(prefix)

    def _point(self, loaded: _Loaded, setting: Setting) -> dict[str, Any]:
        """Accuracy/loss (and size, measured sparsity) of one arm under one setting; cached."""
        from craftlab.compression.pipeline import compress
        from craftlab.compression.prune import sparsity_report
        from craftlab.compression.quant import model_stats
        from craftlab.evaluation import evaluate

        def compute() -> dict[str, Any]:
            t0 = time.perf_counter()
            ctx = loaded.ctx
            if setting.is_identity:
                model = loaded.model  # evaluation only reads it
            else:
                model = compress(loaded.model, calib=ctx.calib, **setting.compress_kwargs())
            res = evaluate(model, ctx.test)
            out = {"accuracy": res["accuracy"], "loss": res["loss"], "n": res["n"],
                   "sparsity_measured": sparsity_report(model)["overall"],
                   "size_mb": model_stats(model, ctx.example)["size_mb"],
                   "seconds": time.perf_counter() - t0}
            self._mark_dirty(loaded.point_prefix)
            return out

        return self._points.get_or_compute((*loaded.point_prefix, setting.key()), compute)

    def _has_point(self, loaded: _Loaded, setting: Setting) -> bool:
        return (*loaded.point_prefix, setting.key()) in self._points

    def compress(self, model: str, setting: Setting | None = None, progress: Progress | None = None,
                 **kwargs: Any) -> dict[str, Any]:
        """Full-precision and compressed test accuracy of both arms of `model` under `setting`.

        `setting` is a :class:`Setting` or given as keyword arguments of :func:`make_setting`. Returns
        ``{"model", "setting", "setting_label", "arms": {arm_name: {"role", "label", "checkpoint",
        "fp_accuracy", "compressed_accuracy", "accuracy_drop", "fp_loss", "compressed_loss",
        "sparsity_measured", "size_mb", "fp_size_mb", "n"}}}``; deterministic for given inputs.
        """
        if setting is None:
            setting = make_setting(**kwargs)
        elif kwargs:
            raise TypeError("give either a Setting or keyword arguments, not both")
        with self._foreground():
            loaded = self.arms(model, progress)

            def one(la: _Loaded) -> dict[str, Any]:
                fp = self._point(la, DEFAULT_SETTING)
                cp = self._point(la, setting)
                return {"role": la.arm.role, "label": la.arm.label, "checkpoint": la.path.name,
                        "fp_accuracy": fp["accuracy"], "compressed_accuracy": cp["accuracy"],
                        "accuracy_drop": fp["accuracy"] - cp["accuracy"], "fp_loss": fp["loss"],
                        "compressed_loss": cp["loss"], "sparsity_measured": cp["sparsity_measured"],
                        "size_mb": cp["size_mb"], "fp_size_mb": fp["size_mb"], "n": cp["n"]}

            results = self._map(one, loaded)
        return {"model": model.strip(), "setting": setting.as_dict(), "setting_label": setting.label(),
                "arms": {la.arm.name: r for la, r in zip(loaded, results)}}

    # ------------------------------------------------------------------ curves

    def curve_settings(self, granularity: str = "channel") -> list[tuple[str, str, float, Setting]]:
        """(curve, series, x, setting) of every curve point: sparsity curves per method, bits curves per mode."""
        out: list[tuple[str, str, float, Setting]] = [("sparsity", m, 0.0, DEFAULT_SETTING)
                                                      for m in ("magnitude", "wanda")]
        for m in ("magnitude", "wanda"):
            out += [("sparsity", m, s, make_setting(m, s)) for s in self.sparsity_grid]
        for b in self.bits_grid:
            out.append(("bits", "W-only", float(b), make_setting("none", 0, b, None, granularity)))
            out.append(("bits", "W=A", float(b), make_setting("none", 0, b, b, granularity)))
        return out

    def curves(self, model: str, granularity: str = "channel", schedule: bool = True,
               progress: Progress | None = None) -> dict[str, Any]:
        """Accuracy curves of both arms from the cache; missing points are scheduled in the background.

        Returns ``{"sparsity": DataFrame(arm, role, label, method, sparsity, accuracy),
        "bits": DataFrame(arm, role, label, mode, bits, accuracy), "done": int, "total": int,
        "complete": bool}``. Call again (the app polls) to get the points computed since.
        """
        loaded = self.arms(model, progress)
        rows: dict[str, list[dict[str, Any]]] = {"sparsity": [], "bits": []}
        missing: list[tuple[_Loaded, Setting]] = []
        settings = self.curve_settings(granularity)
        for la in loaded:
            for curve, series, x, s in settings:
                p = self._points.get((*la.point_prefix, s.key()))
                if p is None:
                    missing.append((la, s))
                    continue
                row = {"arm": la.arm.name, "role": la.arm.role, "label": la.arm.label, "accuracy": p["accuracy"],
                       "seed": 0}
                if curve == "sparsity":
                    row.update(method=series, sparsity=x)
                else:
                    row.update(mode=series, bits=x)
                rows[curve].append(row)
        if schedule and missing:
            for la, s in missing:
                self._enqueue(0, ("point", la.fingerprint, la.ctx.key, s.key()), self._point, la, s)
        total = len(settings) * len(loaded)
        cols = {"sparsity": ["arm", "role", "label", "method", "sparsity", "accuracy", "seed"],
                "bits": ["arm", "role", "label", "mode", "bits", "accuracy", "seed"]}
        frames = {k: pd.DataFrame(v, columns=cols[k]) for k, v in rows.items()}
        return {**frames, "done": total - len(missing), "total": total, "complete": not missing}

    # ------------------------------------------------------------------ probes

    def sharpness(self, model: str, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
        """λmax, Hessian trace (± stderr) and ε-sharpness (ρ = the explorer's) of each full-precision arm.

        Measured on the fixed probe batch with :func:`craftlab.sharpness.sharpness_summary`; cached per checkpoint.
        """
        from craftlab.probes.sharpness import sharpness_summary

        with self._foreground():
            loaded = self.arms(model, progress)

            def one(la: _Loaded) -> dict[str, Any]:
                def compute() -> dict[str, Any]:
                    probe_model = copy.deepcopy(la.model).requires_grad_(True)  # probes perturb weights in place
                    res = sharpness_summary(probe_model, la.ctx.probe, rho=self.sam_rho, seed=0)
                    out = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                           for k, v in res.items()}
                    out["n_examples"] = sum(len(y) for _, y in la.ctx.probe)
                    self._mark_dirty(la.point_prefix)
                    return out

                return self._sharpness.get_or_compute(la.point_prefix, compute)

            results = self._map(one, loaded)
        return {la.arm.name: {"role": la.arm.role, "label": la.arm.label, **r} for la, r in zip(loaded, results)}

    def landscape(self, model: str, setting: Setting | None = None, progress: Progress | None = None,
                  **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Loss landscapes of both arms around the full-precision weights, the compressed point marked.

        For a compression setting: ``path`` is :func:`craftlab.landscape.compression_path` (loss along
        ``w + t (C(w) − w)`` with its 2nd-order prediction) and ``plane`` is
        :func:`craftlab.landscape.compression_plane` (that direction and a random one). With no compression:
        a random filter-normalized ``line`` and ``plane``. Returns ``{arm_name: {"role", "label", "path",
        "plane", "seconds"}}``; cached per (checkpoint, setting, resolution).
        """
        from craftlab.probes import landscape as L

        if setting is None:
            setting = make_setting(**kwargs)
        with self._foreground():
            loaded = self.arms(model, progress)
            res = (self.landscape_steps, self.path_steps, self.landscape_distance)

            def one(la: _Loaded) -> dict[str, Any]:
                def compute() -> dict[str, Any]:
                    from craftlab.compression.pipeline import compress

                    stored = self._read_landscape(la, setting, res)
                    if stored is not None:
                        return stored
                    t0 = time.perf_counter()
                    base = copy.deepcopy(la.model).requires_grad_(True)
                    probe = la.ctx.probe
                    if setting.is_identity:
                        path: Any = L.line(base, probe, steps=self.path_steps, distance=1.0, seed=0)
                        plane = L.plane(base, probe, steps=self.landscape_steps, distance=1.0, seed=0)
                    else:
                        compressed = compress(base, calib=la.ctx.calib, **setting.compress_kwargs())
                        path = L.compression_path(base, compressed, probe, steps=self.path_steps)
                        plane = L.compression_plane(base, compressed, probe, steps=self.landscape_steps,
                                                    distance=self.landscape_distance, seed=0)
                    out = {"path": path, "plane": plane, "seconds": time.perf_counter() - t0}
                    self._write_landscape(la, setting, res, out)
                    return out

                return self._landscapes.get_or_compute((*la.point_prefix, setting.key(), res), compute)

            results = self._map(one, loaded)
        return {la.arm.name: {"role": la.arm.role, "label": la.arm.label, "setting_label": setting.label(), **r}
                for la, r in zip(loaded, results)}

    def _landscape_file(self, la: _Loaded, setting: Setting, res: tuple) -> Path:
        h = hashlib.sha1(json.dumps([setting.key(), list(res), self.probe_size]).encode()).hexdigest()[:16]
        return cache.subdir("explore") / f"landscape-{la.fingerprint[:20]}-{la.ctx.key}-{h}.json"

    def _read_landscape(self, la: _Loaded, setting: Setting, res: tuple) -> dict[str, Any] | None:
        from craftlab.probes.landscape import LineResult, PathResult, PlaneResult

        if not self.persist:
            return None
        try:
            d = json.loads(self._landscape_file(la, setting, res).read_text())
            if d.get("version") != EVAL_VERSION:
                return None
            path_cls = PathResult if d["path"].get("kind") == "compression_path" else LineResult
            return {"path": path_cls.from_dict(d["path"]), "plane": PlaneResult.from_dict(d["plane"]),
                    "seconds": float(d["seconds"])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _write_landscape(self, la: _Loaded, setting: Setting, res: tuple, out: dict[str, Any]) -> None:
        if not self.persist:
            return
        try:
            _atomic_write_json(self._landscape_file(la, setting, res),
                               {"version": EVAL_VERSION, "path": out["path"].to_dict(),
                                "plane": out["plane"].to_dict(), "seconds": out["seconds"]})
            files = sorted(cache.subdir("explore").glob("landscape-*.json"), key=lambda f: f.stat().st_mtime)
            for f in files[:-MAX_STORED_LANDSCAPES]:  # keep the disk cache bounded too
                f.unlink(missing_ok=True)
        except OSError:
            pass

    def has_landscape(self, model: str, setting: Setting) -> bool:
        """True when :meth:`landscape` of `model` under `setting` would answer from the cache."""
        try:
            arms = self.resolve(model)
            prefixes = []
            for a in arms:
                fp = self._fingerprint(a.checkpoint)
                la = self._models.get(fp)
                if la is None:
                    return False
                prefixes.append(la.point_prefix)
        except (ValueError, OSError):
            return False
        res = (self.landscape_steps, self.path_steps, self.landscape_distance)
        return all((*p, setting.key(), res) in self._landscapes for p in prefixes)

    # ------------------------------------------------------------------ background work

    def _enqueue(self, priority: int, key: Hashable, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self._jobs.put((priority, next(self._seq), key, fn, args))
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._stop.clear()
                self._worker = threading.Thread(target=self._work, name="craftlab-explore-worker", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        _lower_priority()
        while not self._stop.is_set():
            try:
                _, _, key, fn, args = self._jobs.get(timeout=1.0)
            except queue.Empty:
                self.flush()
                continue
            try:
                while not self._idle.wait(0.5):  # foreground requests first
                    if self._stop.is_set():
                        return
                fn(*args)
            except Exception as err:  # a background failure must not kill the worker
                with self._lock:
                    self._warm_state["error"] = f"{type(err).__name__}: {err}"
            finally:
                with self._lock:
                    self._queued.discard(key)
        self.flush()

    def pending(self) -> int:
        """Background jobs not yet done."""
        with self._lock:
            return len(self._queued)

    def warm(self, models: Sequence[str], setting: Setting | None = None, curves: bool = True,
             probes: bool = True) -> threading.Thread:
        """Prepare `models` in the background: fine-tune missing arms, then
        the first model's sharpness and landscape at `setting`, then every model's curve points.
        Returns the thread; :meth:`status` reports progress."""
        setting = setting or DEFAULT_SETTING
        models = list(models)

        def run() -> None:
            try:
                for m in models:
                    with self._lock:
                        self._warm_state.update(stage=f"loading or fine-tuning {m}", models=models)
                    self.arms(m)
                with self._lock:
                    self._warm_state["stage"] = "ready"
                for i, m in enumerate(models):
                    if curves:
                        self.curves(m, schedule=False)
                        for la in self.arms(m):
                            for _, _, _, s in self.curve_settings():
                                if not self._has_point(la, s):
                                    self._enqueue(2 + i, ("point", la.fingerprint, la.ctx.key, s.key()),
                                                  self._point, la, s)
                    if probes and i == 0:
                        self._enqueue(1, ("sharpness", m), self.sharpness, m)
                        self._enqueue(1, ("landscape", m, setting.key()), self.landscape, m, setting)
            except Exception as err:
                with self._lock:
                    self._warm_state.update(stage="failed", error=f"{type(err).__name__}: {err}")

        t = threading.Thread(target=run, name="craftlab-explore-warm", daemon=True)
        t.start()
        return t

    def status(self) -> dict[str, Any]:
        """Warm-up stage, runs being fine-tuned (epochs done / total) and background jobs pending."""
        with self._lock:
            runs = [{"key": k, "label": f"{j.spec.model} [{_arm_label(j.spec)}]", "epochs_done": len(j.history),
                     "epochs": j.spec.epochs, "done": j.done.is_set(), "running": j.running,
                     "text": j.describe(),
                     "error": None if j.error is None else str(j.error)} for k, j in self._runs.items()]
            return {**self._warm_state, "runs": runs, "pending": len(self._queued)}

    def close(self) -> None:
        """Stop the background worker (after writing the point stores) and the thread pool."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        self.flush()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _check_hub(model: str, timeout: float = 3.0) -> None:
    """Fail fast when a timm model's pretrained weights would have to come from an unreachable Hugging Face Hub
    (the hub client otherwise retries for minutes). Zoo models and ``HF_HUB_OFFLINE=1`` skip the check."""
    import socket

    from craftlab.models import zoo_names

    if model in zoo_names() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError as err:
        raise RuntimeError(
            f"timm model {model!r} needs its pretrained weights from the Hugging Face Hub, which is unreachable "
            f"({err}); the zoo models ({', '.join(zoo_names())}) work offline, and HF_HUB_OFFLINE=1 uses weights "
            "already in the Hugging Face cache") from None


def _lower_priority(niceness: int = 10) -> None:
    """Make the calling thread yield the CPU to request threads (Linux: per-thread nice); no-op elsewhere."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


class _ForegroundGuard:
    """Counts foreground requests; background jobs wait while any runs."""

    def __init__(self, ex: Explorer) -> None:
        self.ex = ex

    def __enter__(self) -> None:
        with self.ex._lock:
            self.ex._busy += 1
            self.ex._idle.clear()

    def __exit__(self, *exc: Any) -> None:
        with self.ex._lock:
            self.ex._busy -= 1
            if self.ex._busy == 0:
                self.ex._idle.set()
