"""Pretraining and fine-tuning from a pretrained run, for the app's Train tab (issue 11, SNT).

A learner builds their own "foundation": :func:`make_pretrain_spec` validates a pretraining request once into a
:class:`~craftlab.train.pretrain_runs.PretrainSpec` (model, optimizer, SAM ρ, train-time transform, epochs, seed),
and :func:`make_transfer` a fine-tuning request from a cached pretraining run into a
:class:`~craftlab_app.transfers.Transfer` (the plain arm; its CrAFT twin is made beside it). Both train in the
background on the explorer's :class:`~craftlab_app.training.Trainer` (one job at a time, each at most once, live
history); :class:`PretrainMixin` streams their state. The fine-tuned pair is an Explore model
(``pretrained:<key>/<run>``, :mod:`craftlab_app.transfers`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from craftlab._errors import unknown_name
from craftlab.train.pretrain_runs import PretrainSpec

from .training import MAX_EPOCHS, MAX_LR, MAX_RHO, _number, _whole
from .transfers import Transfer, spec_of_pretrain, transfer_name

__all__ = ["MAX_PRETRAIN_EPOCHS", "PRETRAIN_OPTIMIZERS", "PretrainMixin", "make_pretrain_spec", "make_transfer",
           "pretrain_choices"]

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
    from craftlab import cache
    from craftlab.checkpoint import read_meta
    from craftlab.data import dataset_names

    key = str(pretrained or "").strip()
    keys = [k for _, k in pretrain_choices()]
    if key not in keys:
        raise unknown_name("pretrained run", key or pretrained, keys,
                           hint="pretrain one first (the form above), then pick it here")
    data = str(data).strip()
    if data not in dataset_names() and not data.startswith("imagefolder:"):
        raise unknown_name("dataset", data, dataset_names())
    spec = spec_of_pretrain(read_meta(cache.home() / "pretrain" / key).get("pretrain"))
    return Transfer(spec, data=data, epochs=_whole(epochs, "epochs", 1, MAX_EPOCHS), seed=_whole(seed, "seed", 0),
                    lr=_rate(lr))


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


class PretrainMixin:
    """Pretraining and transfer runs of the app's :class:`~craftlab_app.service.Explorer` (needs its trainer)."""

    sam_rho: float

    def _job_state(self, jobs: Sequence[tuple[Any, str, str, int, Any]]) -> dict[str, Any]:
        from craftlab.checkpoint import read_meta

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
        job = None if is_cached(path, "pretrain", spec_record(spec)) else self._trainer.submit(  # type: ignore[attr-defined]
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
            return self._trainer.submit(  # type: ignore[attr-defined]
                "transfer/" + x.key, f"{x.pretrain.model} [{x.run_spec.label}] from {x.pretrain.label}", x.epochs,
                lambda callback: get_transfer(x.pretrain, x.data, x.epochs, x.optimizer, x.lr, x.sam_rho, x.seed,
                                              progress=False, callback=callback))

        jobs = [(start(x), x.key, x.run_spec.label, x.epochs, x.path) for x in pair]
        name = transfer_name(plain)
        return self._poll(jobs, lambda: {**self._job_state(jobs), "key": plain.key, "model": name}, poll)
