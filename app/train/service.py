"""What the Train tab computes (no Gradio): fine-tuning runs, pretraining runs and transfers (issue 11, SNT).

* :func:`make_run_spec` reads the form's loose values (sliders' floats, empty fields) into a
  :class:`~craftlab.train.runs.RunSpec`, which validates every field (the core's rule); the form adds its upper
  limits and names unknown models (:func:`craftlab.train.runs.unknown_model`) and datasets.
* :func:`make_pretrain_spec` validates a pretraining request into a
  :class:`~craftlab.train.pretrain_runs.PretrainSpec` (model, optimizer, SAM ρ, train-time transform, epochs,
  seed), and :func:`make_transfer` a fine-tuning request from a cached pretraining run into a
  :class:`~craftlab_app.common.transfers.Transfer` (the plain arm; its CrAFT twin is made beside it).
* :class:`TrainService` trains them in the background on the app's one
  :class:`~craftlab_app.common.jobs.Trainer` (one job at a time, each at most once, live history). A fine-tuned
  pair is an Explore model (``pretrained:<key>/<run>``, :mod:`craftlab_app.common.transfers`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from craftlab._errors import unknown_name
from craftlab.checkpoint import read_meta
from craftlab.train import runs
from craftlab.train.pretrain_runs import PretrainSpec
from craftlab.train.runs import RunSpec, unknown_model

from ..common.jobs import JobHost, Trainer
from ..common.transfers import Transfer, spec_of_pretrain, transfer_name

__all__ = ["MAX_EPOCHS", "MAX_PRETRAIN_EPOCHS", "MAX_RHO", "PRETRAIN_OPTIMIZERS", "TrainService",
           "estimate_seconds", "make_pretrain_spec", "make_run_spec", "make_transfer", "pretrain_choices"]

MAX_EPOCHS = 200
MAX_RHO = 10.0
MAX_LR = 10.0
MAX_BATCH = 4096
DEFAULT_BATCH = 64
"""The data's default training batch size (``craftlab.load_data``): a run asking for it is the default run."""


def _whole(value: Any, what: str, low: int, high: int | None = None) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if f != f or not f.is_integer() or f < low or (high is not None and f > high):
        where = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be a whole number {where}, got {value!r}")
    return int(f)


def make_run_spec(model: str, data: str = "digits", optimizer: str = "adamw", sam_rho: Any = 0.0,
                  adaptive: bool = False, epochs: Any = 8, seed: Any = 0, lr: Any = None,
                  batch_size: Any = None) -> RunSpec:
    """Read loose user input (a form, an API call) into a :class:`RunSpec`; ValueError names the problem.

    The form's reading: names checked against what exists, sliders' floats as whole numbers, empty fields as
    defaults, the form's upper limits; :class:`RunSpec` itself checks every field's range (the core's rule).
    ``epochs`` and ``seed`` may be floats holding whole numbers (sliders send 3.0); ρ is in [0, 10]; ``lr`` is a peak
    learning rate in (0, 10], or None / 0 / "" for the optimizer's default; ``batch_size`` a whole number in
    [1, 4096], or None / "" for the data's default (64, which is also stored as None: the same run, the same key).

    Example::

        >>> make_run_spec("vit-tiny", "digits", "adamw", 0.05, False, 3.0).key
        'vit-tiny-digits-adamw+sam0.05-e3-s0'
    """
    from craftlab.data import dataset_names
    from craftlab.models import is_known_model

    name, data = str(model).strip(), str(data).strip()
    if not is_known_model(name):
        raise unknown_model(name)
    if data not in dataset_names() and not data.startswith("imagefolder:"):
        raise unknown_name("dataset", data, dataset_names())
    rho = _number(sam_rho)
    if not 0 <= rho <= MAX_RHO:
        raise ValueError(f"rho must be in [0, {MAX_RHO:g}], got {sam_rho!r}")
    rate = None if lr is None or (isinstance(lr, str) and not lr.strip()) or lr == 0 else _number(lr)
    if rate is not None and not 0 < rate <= MAX_LR:
        raise ValueError(f"lr must be in (0, {MAX_LR:g}] (or empty for the optimizer's default), got {lr!r}")
    bs = None if batch_size is None or (isinstance(batch_size, str) and not batch_size.strip()) else \
        _whole(batch_size, "batch size", 1, MAX_BATCH)
    return RunSpec(model=name, data=data, optimizer=optimizer, lr=rate,
                   epochs=_whole(epochs, "epochs", 1, MAX_EPOCHS), sam_rho=rho, adaptive=bool(adaptive),
                   seed=_whole(seed, "seed", 0), batch_size=None if bs == DEFAULT_BATCH else bs)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def estimate_seconds(spec: RunSpec, twin: bool = True) -> float | None:
    """Estimated fine-tuning time of `spec` (and its twin): seconds per epoch of the cached runs of the same
    model and data (a SAM epoch costs two forward-backward passes), times the epochs; None when no such run
    is cached yet."""
    per_epoch = []
    for r in runs.list_runs():
        run = r.get("run") or {}
        if run.get("model") != spec.model or run.get("data") != spec.data:
            continue
        try:
            hist = read_meta(Path(r["path"])).get("history") or []
        except (ValueError, OSError):
            continue
        times = [h["time_s"] for h in hist if isinstance(h.get("time_s"), (int, float))]
        if times:
            per_epoch.append(sorted(times)[len(times) // 2] / (2.0 if run.get("sam_rho") else 1.0))
    if not per_epoch:
        return None
    base = sorted(per_epoch)[len(per_epoch) // 2] * spec.epochs
    cost = (2.0 if spec.sam_rho else 1.0) + ((1.0 if spec.sam_rho else 2.0) if twin else 0.0)
    return base * cost


PRETRAIN_OPTIMIZERS = ("adam", "adamw", "sgd")
MAX_PRETRAIN_EPOCHS = 50


def _rate(lr: Any) -> float | None:
    rate = None if lr is None or (isinstance(lr, str) and not lr.strip()) or lr == 0 else _number(lr)
    if rate is not None and not 0 < rate <= MAX_LR:
        raise ValueError(f"lr must be in (0, {MAX_LR:g}] (or empty for the default), got {lr!r}")
    return rate


def _rho(value: Any) -> float:
    rho = _number(value)
    if not 0 <= rho <= MAX_RHO:
        raise ValueError(f"rho must be in [0, {MAX_RHO:g}], got {value!r}")
    return rho


def make_pretrain_spec(model: str = "vit-tiny", optimizer: str = "adam", sam_rho: Any = 0.0,
                       transform: str | None = None, epochs: Any = None, seed: Any = 0, lr: Any = None) -> PretrainSpec:
    """Validate a pretraining request (a form, an API call) into a resolved :class:`PretrainSpec`; ValueError
    names the problem. ``transform`` is a registered name or spec (``expand``, ``repvgg``, ``weight-noise``,
    ``expand:rate=4``) or None / ``"none"``; it must apply to the model. ``epochs`` / ``lr`` None or "" mean
    the zoo's recipe.

    Example::

        >>> make_pretrain_spec("resnet-tiny", "adam", 0, "repvgg", 2).key
        'resnet-tiny-mnist5k-adam+repvgg-lr0.002-e2-s0'
    """
    from craftlab.models import ZOO, build_model
    from craftlab.transforms import get_transform

    name = str(model).strip()
    if name not in ZOO:
        raise unknown_name("model to pretrain", name, sorted(ZOO),
                           hint="the Train tab pretrains the zoo architectures on mnist5k")
    if optimizer not in PRETRAIN_OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, PRETRAIN_OPTIMIZERS)
    text = None if transform is None else str(transform).strip()
    t = None if text is None or text.lower() in ("", "none") else get_transform(text)
    if t is not None:
        t.check(build_model(name))  # a transform that applies to no layer of this model is named now
    n = None if epochs is None or (isinstance(epochs, str) and not epochs.strip()) else \
        _whole(epochs, "epochs", 1, MAX_PRETRAIN_EPOCHS)
    return PretrainSpec(name, "mnist5k", optimizer, _rate(lr), n, None, _rho(sam_rho),
                        None if t is None else t.spec, _whole(seed, "seed", 0)).resolved()


def make_transfer(pretrained: str, data: str = "digits", epochs: Any = 3, seed: Any = 0, lr: Any = None) -> Transfer:
    """Validate a fine-tuning request from the cached pretraining run `pretrained` (its key, see
    :func:`pretrain_choices`) into the plain arm's :class:`Transfer`; ValueError names the problem."""
    from craftlab.data import dataset_names

    key = str(pretrained or "").strip()
    choices = _pretrains()
    keys = list(choices)
    if key not in keys:
        raise unknown_name("pretrained run", key or pretrained, keys,
                           hint="pretrain one first (the form above), then pick it here")
    data = str(data).strip()
    if data not in dataset_names() and not data.startswith("imagefolder:"):
        raise unknown_name("dataset", data, dataset_names())
    return Transfer(choices[key], data=data, epochs=_whole(epochs, "epochs", 1, MAX_EPOCHS),
                    seed=_whole(seed, "seed", 0), lr=_rate(lr))


def _pretrains() -> dict[str, PretrainSpec]:
    """{key: spec} of every cached pretraining run whose record is one (:func:`list_pretrains`)."""
    from craftlab.train.pretrain_runs import list_pretrains

    out = {}
    for r in list_pretrains():
        try:
            out[r["key"]] = spec_of_pretrain(r["spec"])
        except ValueError:
            continue
    return out


def pretrain_choices() -> list[tuple[str, str]]:
    """(label, key) of every cached pretraining run of the zoo architectures, for a picker."""
    from craftlab.train.pretrain_runs import list_pretrains

    out = []
    for r in list_pretrains():
        try:
            spec = spec_of_pretrain(r["spec"])
        except ValueError:
            continue
        acc = r.get("test_accuracy")
        acc_text = f", source test accuracy {acc:.1%}" if isinstance(acc, float) else ""
        out.append((f"{spec.model} · {spec.label} · {spec.epochs} epochs · seed {spec.seed}{acc_text}", r["key"]))
    return out


class TrainService:
    """What the Train tab computes: fine-tuning runs (and their twins), pretraining runs and transfer pairs,
    trained on the app's one :class:`~craftlab_app.common.jobs.Trainer` (runs take turns), streamed live.

    `host` gives the trainer and the ρ of a plain run's CrAFT twin (:class:`~craftlab_app.common.jobs.JobHost`:
    the Explore tab's Explorer, handed over by the shell, so both tabs share one queue of runs).

    Example::

        >>> svc = TrainService(explorer)  # doctest: +SKIP
        >>> for state in svc.train_stream(make_run_spec("vit-tiny", epochs=1)): ...  # doctest: +SKIP
    """

    def __init__(self, host: JobHost) -> None:
        self.host = host

    @property
    def sam_rho(self) -> float:
        return self.host.sam_rho

    @property
    def _trainer(self) -> Trainer:
        return self.host.jobs

    def train_specs(self, specs: Sequence[RunSpec], progress: Any = None) -> list[Path]:
        """Fine-tune the uncached `specs` (one after the other, each once even if asked for concurrently);
        their checkpoint folders."""
        return self._trainer.train(specs, progress)

    def train_stream(self, spec: RunSpec | Mapping[str, Any], twin: bool = True,
                     poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Fine-tune `spec` (and, with `twin`, its plain / SAM twin); yield the live state every `poll` s.

        `spec` is a :class:`RunSpec` (trusted) or the arguments of :func:`make_run_spec`. See
        :meth:`craftlab_app.common.jobs.Trainer.stream` for the states yielded.
        """
        if not isinstance(spec, RunSpec):
            spec = make_run_spec(**spec)
        return self._trainer.stream(spec, twin=twin, poll=poll)

    def _job_state(self, jobs: Sequence[tuple[Any, str, str, int, Any]]) -> dict[str, Any]:
        runs = []
        for job, key, label, epochs, path in jobs:
            finished = job is None or (job.done.is_set() and job.error is None)
            meta = read_meta(path) if finished else {}
            runs.append({"key": key, "label": label, "role": "craft" if "SAM" in label else "plain", "epochs": epochs,
                         "history": list(meta.get("history") or []) if job is None else list(job.history),
                         "done": job is None or job.done.is_set(), "cached": job is None,
                         "running": job is not None and job.running,
                         "test_accuracy": (meta.get("metrics") or {}).get("test_accuracy")})
        return {"runs": runs, "done": all(r["done"] for r in runs)}

    @staticmethod
    def _poll(jobs: Sequence[tuple[Any, str, str, int, Any]], state: Any, poll: float) -> Iterator[dict[str, Any]]:
        while True:
            for job, *_ in jobs:
                if job is not None and job.error is not None:
                    raise job.error
            st = state()
            yield st
            if st["done"]:
                return
            time.sleep(poll)

    def pretrain_stream(self, spec: PretrainSpec | dict[str, Any], poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Pretrain `spec` (a :class:`PretrainSpec`, or :func:`make_pretrain_spec` arguments) in the background
        and yield its live state every `poll` s: ``{"runs": [one run, as Trainer.stream], "done", "key"}``."""
        from craftlab.train.pretrain import get_pretrain
        from craftlab.train.pretrain_runs import is_cached, pretrain_dir, spec_record

        spec = make_pretrain_spec(**spec) if isinstance(spec, dict) else spec.resolved()
        path = pretrain_dir(spec)
        job = None if is_cached(path, "pretrain", spec_record(spec)) else self._trainer.submit(
            "pretrain/" + spec.key, f"{spec.model} pretrained [{spec.label}]", int(spec.epochs),
            lambda callback: get_pretrain(spec, progress=False, callback=callback))
        jobs = [(job, spec.key, f"pretrain {spec.label}", int(spec.epochs), path)]
        return self._poll(jobs, lambda: {**self._job_state(jobs), "key": spec.key}, poll)

    def transfer_stream(self, transfer: Transfer | dict[str, Any], sam_rho: float | None = None,
                        poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Fine-tune `transfer` (a :class:`Transfer` or :func:`make_transfer` arguments) and its CrAFT twin (SAM
        ρ = `sam_rho`, default the explorer's) from their pretraining run; yield the live state every `poll` s,
        with ``"model"``: the pair's Explore model name."""
        from craftlab.train.pretrain import get_transfer

        t = make_transfer(**transfer) if isinstance(transfer, dict) else transfer
        rho = self.sam_rho if sam_rho is None else _rho(sam_rho)
        if not rho > 0:
            raise ValueError(f"the CrAFT twin needs SAM rho > 0, got {sam_rho!r}")
        plain = t.twin(0.0) if t.sam_rho else t
        pair = [plain, plain.twin(rho)]

        def start(x: Transfer) -> Any:
            if x.is_cached():
                return None
            return self._trainer.submit(
                "transfer/" + x.key, f"{x.pretrain.model} [{x.run_spec.label}] from {x.pretrain.label}", x.epochs,
                lambda callback: get_transfer(x.pretrain, x.data, x.epochs, x.optimizer, x.lr, x.sam_rho, x.seed,
                                              progress=False, callback=callback))

        jobs = [(start(x), x.key, x.run_spec.label, x.epochs, x.path) for x in pair]
        name = transfer_name(plain)
        return self._poll(jobs, lambda: {**self._job_state(jobs), "key": plain.key, "model": name}, poll)
