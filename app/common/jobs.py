"""Background training jobs of the app (fine-tuning, pretraining, transfers): trained one at a time in
background threads, each at most once however many requests ask for it, with live history. Shared by the
Explore tab (a model's missing arms) and the Train tab (the user's runs); the requests themselves are validated
by the Train tab's service (:func:`craftlab_app.train.service.make_run_spec`) and by :class:`RunSpec`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from craftlab.checkpoint import read_meta
from craftlab.train import runs
from craftlab.train.runs import RunSpec, arm_label, run_dir

from .concurrency import Cancelled, lower_priority
from .hub import check_hub

__all__ = ["JobHost", "Trainer", "is_cached", "role_of"]

Progress = Callable[[float, str], None]
_TRAIN_LOCK = threading.Lock()
"""Fine-tuning runs in one process take turns: they seed torch's process-wide RNG (head initialisation,
dropout), so two runs in parallel threads would draw from one stream in a racy order and a cached run
would no longer be what its settings say."""


def role_of(spec: RunSpec) -> str:
    """``"craft"`` for a run with SAM / ASAM, ``"plain"`` for the optimizer alone."""
    return "craft" if spec.sam_rho > 0 else "plain"


@dataclass
class _RunJob:
    """One training job (a fine-tuning run, a pretraining run, a transfer): its live history and outcome."""

    key: str
    label: str
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    path: Path | None = None
    error: BaseException | None = None
    running: bool = False

    def describe(self) -> str:
        where = f"epoch {len(self.history)}/{self.epochs}" if self.running else "queued"
        return f"{self.label} {where}"


def is_cached(spec: RunSpec | None) -> bool:
    """True when `spec`'s checkpoint exists and is that run (None: a fixed checkpoint, cached by definition)."""
    return spec is None or runs.is_cached(spec)


class Trainer:
    """The runs fine-tuned by this process. ``sam_rho`` is the ρ of a plain run's twin."""

    def __init__(self, sam_rho: float) -> None:
        self.sam_rho = sam_rho
        self._runs: dict[str, _RunJob] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def close(self, timeout: float = 60.0) -> None:
        """Stop: runs not started yet are not, a running one stops after its current epoch (nothing is saved)."""
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout)

    def _start(self, spec: RunSpec, background: bool = False) -> _RunJob:
        from craftlab.train.runs import get_run

        check_hub(spec.model)
        return self.submit(spec.key, f"{spec.model} [{arm_label(spec)}]", spec.epochs,
                           lambda callback: get_run(spec, progress=False, callback=callback), background)

    def submit(self, key: str, label: str, epochs: int, run: Callable[[Callable[[dict[str, float]], None]], Path],
               background: bool = False) -> _RunJob:
        """Start `run(callback)` (it trains, calls ``callback(epoch record)`` after each epoch and returns the
        checkpoint folder) in a thread, after the other jobs (one at a time: see ``_TRAIN_LOCK``); the job of
        `key` already running or done is returned instead (a failed one is started again)."""
        with self._lock:
            job = self._runs.get(key)
            if job is not None and (not job.done.is_set() or job.error is None):
                return job
            job = self._runs[key] = _RunJob(key, label, epochs)

        def epoch_done(record: dict[str, float]) -> None:
            job.history.append(record)
            if self._stop.is_set():
                raise Cancelled("the app is closing")

        def work() -> None:
            if background:
                lower_priority()  # the seed runs of the default models yield to requests and to the user's runs
            try:
                with _TRAIN_LOCK:  # one at a time: runs seed torch's process-wide RNG (see _TRAIN_LOCK)
                    if self._stop.is_set():
                        raise Cancelled("the app is closing")
                    job.running = True
                    job.path = run(epoch_done)
            except BaseException as err:  # reported to every waiter
                job.error = err
            finally:
                job.done.set()

        thread = threading.Thread(target=work, name=f"craftlab-run-{key}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job

    def train(self, specs: Sequence[RunSpec], progress: Progress | None = None, background: bool = False) -> list[Path]:
        """Fine-tune the uncached `specs` and wait for them; their checkpoint folders. `background` runs them
        at a low priority (the default models' extra seeds)."""
        live = [self._start(s, background) for s in specs if not is_cached(s)]
        while live and not all(j.done.is_set() for j in live):
            if progress is not None:
                total = sum(j.epochs for j in live)
                done = sum(len(j.history) for j in live)
                desc = ", ".join(j.describe() for j in live if not j.done.is_set())
                progress(done / max(total, 1), f"fine-tuning {desc}")
            time.sleep(0.2)
        for j in live:
            if j.error is not None:
                raise j.error
        return [run_dir(s) for s in specs]

    def stream(self, spec: RunSpec, twin: bool = True, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Fine-tune `spec` (and, with `twin`, its plain / SAM twin); yield the live state every `poll` s.

        Each yielded dict has ``runs``: a list of ``{"key", "label", "role", "epochs", "history", "done",
        "cached", "running", "test_accuracy"}``, ``done`` and ``key`` (of `spec`). Cached runs report the
        history stored in their checkpoint. Raises what training raises.
        """
        specs = sorted([spec, spec.twin(self.sam_rho)], key=lambda s: s.sam_rho > 0) if twin else [spec]
        jobs = {s.key: None if is_cached(s) else self._start(s) for s in specs}

        def state() -> dict[str, Any]:
            runs = []
            for s in specs:
                job = jobs[s.key]
                finished = job is None or (job.done.is_set() and job.error is None)
                meta = read_meta(run_dir(s)) if finished else {}
                runs.append({"key": s.key, "label": arm_label(s), "role": role_of(s), "epochs": s.epochs,
                             "history": list(meta.get("history") or []) if job is None else list(job.history),
                             "done": job is None or job.done.is_set(), "cached": job is None,
                             "running": job is not None and job.running,
                             "test_accuracy": (meta.get("metrics") or {}).get("test_accuracy")})
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

    def status(self) -> list[dict[str, Any]]:
        """The runs started by this process: epochs done / total, running, done, error."""
        with self._lock:
            return [{"key": k, "label": j.label, "epochs_done": len(j.history), "epochs": j.epochs,
                     "done": j.done.is_set(), "running": j.running, "text": j.describe(),
                     "error": None if j.error is None else str(j.error)}
                    for k, j in self._runs.items()]


class JobHost(Protocol):
    """What a tab that trains needs from the app: the one :class:`Trainer` (runs take turns) and the ρ of a
    plain run's CrAFT twin. The Explore tab's :class:`~craftlab_app.explore.service.Explorer` is one (the shell,
    ``ui.py``, hands it to the Train tab), so the Train tab never imports the Explore tab."""

    jobs: Trainer
    sam_rho: float
