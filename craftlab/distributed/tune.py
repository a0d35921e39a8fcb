"""The best ρ (and learning rate) of the CrAFT recipe for a task, searched with Ray Tune and ASHA early stopping.

CrAFT fine-tunes for accuracy *after compression*, so that is what the search maximizes by default: each trial is
:func:`craftlab.finetune` of one :class:`~craftlab.train.runs.RunSpec` with its ``sam_rho`` / ``lr`` replaced by
the trial's, and after every epoch it compresses a copy of the model at the named ``setting`` (``"W4A4"``,
``"wanda 50%"``, ...; calibrated on the data's calib split) and reports its validation accuracy
(``compressed_val_accuracy``) next to the uncompressed ``val_accuracy``. ASHA compares trials only from
``grace_period`` epochs on: by default half the schedule, since SAM trails plain training in the first epochs of
a cosine schedule (its perturbed gradient slows early progress) and an early rung would stop it for that. Tune
keeps its state under ``$CRAFTLAB_HOME/tune`` (the folder every node shares, see
:mod:`~craftlab.distributed.ray_engine`).

Example::

    from craftlab.distributed.tune import tune_craft
    table = tune_craft(RunSpec("vit-tiny", "digits", epochs=8), sam_rho=[0, 0.02, 0.05, 0.1], setting="W4A4")
    table.attrs["best"]  # {"sam_rho": 0.05, "lr": None, "compressed_val_accuracy": ..., "setting": "W4A4"}
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ..train.runs import RunSpec
from .ray_engine import _use_home, ray_session

METRICS = {"compressed_val_accuracy": "max", "val_accuracy": "max", "val_loss": "min"}
"""What a search may optimise, and in which direction."""


def _trial(config: dict[str, Any], spec: dict[str, Any], home: str, threads: int, setting: str) -> None:
    """One Tune trial: fine-tune `spec` with the trial's ρ and lr, reporting each epoch (with the validation
    accuracy of the model compressed at `setting`)."""
    from ray import tune

    from ..compression.pipeline import compress_and_evaluate
    from ..data import load_data
    from ..models import build_model
    from ..train.finetune import finetune
    from ..train.pretrain import create_model

    _use_home(home, threads)
    s = RunSpec(**spec)
    data = load_data(s.data, model=build_model(s.model))
    model = create_model(s.model, num_classes=data.num_classes, pretrained=True, seed=s.seed, progress=False)
    finetune(model, data, optimizer=s.optimizer, lr=config["lr"], epochs=s.epochs, sam_rho=config["sam_rho"],
             adaptive=s.adaptive, seed=s.seed, batch_size=s.batch_size, amp=s.amp, progress=False,
             callback=lambda rec, trained: tune.report({
                 **{k: rec[k] for k in ("epoch", "val_accuracy", "val_loss", "train_loss")},
                 "compressed_val_accuracy": compress_and_evaluate(trained, data, split="val",
                                                                  setting=setting)["accuracy"]}))


def _check_grid(name: str, values: Sequence[Any], allow_none: bool, low_ok: bool) -> list[Any]:
    values = list(values)
    if not values:
        raise ValueError(f"{name} needs at least one value")
    for v in values:
        if v is None and allow_none:
            continue
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < 0 or (v == 0 and not low_ok):
            raise ValueError(f"{name} values must be finite numbers {'>= 0' if low_ok else '> 0'}"
                             f"{' (or None: the default)' if allow_none else ''}, got {v!r}")
    return values


def tune_craft(
    spec: RunSpec,
    sam_rho: Sequence[float] = (0.0, 0.02, 0.05, 0.1),
    lr: Sequence[float | None] = (None,),
    setting: Any = "W4A4",
    metric: str = "compressed_val_accuracy",
    grace_period: int | None = None,
    reduction_factor: float = 2,
    address: str | None = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float | None = None,
    name: str | None = None,
) -> Any:
    """Grid over ``sam_rho`` x ``lr`` for `spec` (its other fields fixed), early-stopped by ASHA on `metric`.

    Args:
        spec: the recipe (model, data, optimizer, epochs, seed, ...); its ``sam_rho`` and ``lr`` are replaced.
        sam_rho: radii to try (0 = the plain optimizer). lr: peak learning rates (None = the optimizer's default).
        setting: the compression setting the model is meant for (a label like ``"W4A4"``, ``"wanda 50%"``, or a
            :class:`~craftlab.settings.Setting`): each epoch's ``compressed_val_accuracy`` is measured there.
        metric: ``compressed_val_accuracy`` (default, maximized), ``val_accuracy`` (uncompressed, maximized) or
            ``val_loss`` (minimized), reported every epoch.
        grace_period, reduction_factor: ASHA's (epochs before a trial may be stopped, default half the epochs
            so SAM's slow start is not held against it; 1/keep fraction per rung).
        address: the Ray cluster, as for :func:`craftlab.sweep` (default: current session / local cluster).
        gpus_per_trial: default 1 when the cluster has GPUs, else 0.

    Returns:
        A pandas DataFrame, one row per trial: ``sam_rho, lr, epochs`` (run before it finished or was stopped),
        the last ``compressed_val_accuracy, val_accuracy, val_loss, train_loss``; ``.attrs["best"]``: the best
        trial's ρ, lr, metric and setting label; ``.attrs["grace_period"]``.
    """
    import pandas as pd
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .. import cache

    if not isinstance(spec, RunSpec):
        raise TypeError(f"spec must be a craftlab RunSpec, got {type(spec).__name__}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    from ..settings import parse_setting

    setting_label = parse_setting(setting).label()  # a bad setting fails here, before any trial
    if grace_period is None:
        grace_period = max(1, math.ceil(spec.epochs / 2))
    if not (isinstance(grace_period, numbers.Integral) and grace_period >= 1):
        raise ValueError(f"grace_period must be a positive number of epochs, got {grace_period!r}")
    rhos = _check_grid("sam_rho", sam_rho, allow_none=False, low_ok=True)
    lrs = _check_grid("lr", lr, allow_none=True, low_ok=False)
    mode = METRICS[metric]
    home = str(cache.home())
    with ray_session(address):
        gpus = gpus_per_trial if gpus_per_trial is not None else (1 if ray.cluster_resources().get("GPU") else 0)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, spec=asdict(spec), home=home, threads=cpus_per_trial,
                                 setting=setting_label),
            {"cpu": cpus_per_trial, "gpu": gpus})
        tuner = tune.Tuner(
            trainable, param_space={"sam_rho": tune.grid_search(rhos), "lr": tune.grid_search(lrs)},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=ASHAScheduler(
                max_t=spec.epochs, grace_period=grace_period, reduction_factor=reduction_factor)),
            run_config=tune.RunConfig(storage_path=str(cache.home() / "tune"), verbose=0,
                                      name=name or f"{spec.key}-search"))
        results = tuner.fit()
    rows = []
    for r in results:
        if r.error is not None:
            raise RuntimeError(f"trial {r.config} failed: {r.error}")
        rows.append({"sam_rho": r.config["sam_rho"], "lr": r.config["lr"], "epochs": r.metrics["epoch"],
                     **{k: r.metrics[k] for k in ("compressed_val_accuracy", "val_accuracy", "val_loss",
                                                  "train_loss")}})
    df = pd.DataFrame(rows).sort_values(["sam_rho", "lr"], key=lambda c: c.fillna(-1)).reset_index(drop=True)
    best = results.get_best_result(metric=metric, mode=mode)
    df.attrs["best"] = {"sam_rho": best.config["sam_rho"], "lr": best.config["lr"], metric: best.metrics[metric],
                        "setting": setting_label}
    df.attrs["grace_period"] = grace_period
    return df
