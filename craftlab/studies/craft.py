"""CrAFT's study: arms × seeds of cached fine-tuning runs and their compression sweeps, as tidy tables, and the
CrAFT benchmark's grid with its paired claim checks (:func:`bench_table`, :func:`bench_claims`).

Every fine-tuning run of :func:`run_arms` goes through :func:`craftlab.get_run`, so a (model, data, optimizer, ρ,
ASAM, epochs, seed) combination is trained once and shared by every notebook, the app and the CLI. The sharpness
half of the study is :mod:`craftlab.studies.craft_sharpness`; notebooks 00–03 import both through
:mod:`craftlab.studies.experiments` (``craftlab.experiments``).

Example::

    runs = run_arms({"AdamW": {}, "SAM ρ=0.05": {"sam_rho": 0.05}}, seeds=(0, 1, 2))
    df = sweep_runs(runs, load_data_for(runs))
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from torch import nn

from ..checkpoint import load_checkpoint, read_meta
from ..data import DataBundle, load_data
from ..distributed.sweep import sweep
from ..models import build_model
from ..settings import Setting, bits_label, parse_setting
from ..train.runs import RunSpec, get_run, run_dir

DEFAULT_BITS = ((8, 8), (6, 6), (4, 8), (4, 4), (3, 8))
"""The PTQ settings of the CrAFT walkthrough, from W8A8 down to W4A4 and W3A8."""

_RUN_KEYS = ("optimizer", "lr", "sam_rho", "adaptive", "sam_mode")


# ----------------------------------------------------------------------------------------------
# runs


def arm_label(sam_rho: float = 0.0, adaptive: bool = False, optimizer: str = "adamw") -> str:
    """Human label of an arm: ``AdamW``, ``SAM ρ=0.05``, ``ASAM ρ=0.5`` (``SGD+SAM ρ=0.05`` for SGD);
    :func:`craftlab.train.runs.arm_label` of the matching RunSpec."""
    return RunSpec(optimizer=optimizer, sam_rho=sam_rho, adaptive=adaptive).label


def _arm_items(arms: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> list[tuple[str, dict]]:
    if isinstance(arms, Mapping):
        items = [(str(label), dict(kw)) for label, kw in arms.items()]
    else:
        items = []
        for kw in arms:
            kw = dict(kw)
            items.append((kw.pop("label", None) or arm_label(kw.get("sam_rho", 0.0), kw.get("adaptive", False),
                                                               kw.get("optimizer", "adamw")), kw))
    for label, kw in items:
        unknown = sorted(set(kw) - set(_RUN_KEYS))
        if unknown:
            raise ValueError(f"arm {label!r}: unknown setting(s) {unknown}; an arm sets only {list(_RUN_KEYS)}")
    labels = [label for label, _ in items]
    if len(set(labels)) != len(labels):
        raise ValueError(f"arm labels must be unique, got {labels}")
    if not items:
        raise ValueError("no arms given")
    return items


def run_arms(
    arms: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    model: str = "vit-tiny",
    data: str = "digits",
    epochs: int = 8,
    progress: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    """Fine-tune (or fetch from the cache) every arm × seed; one row per run.

    Args:
        arms: label -> settings, the settings being any of ``optimizer`` (default ``"adamw"``), ``lr``,
            ``sam_rho`` (0 = no SAM) and ``adaptive`` (ASAM); e.g. ``{"AdamW": {}, "SAM ρ=0.05":
            {"sam_rho": 0.05}}``. A list of settings dicts is labelled by :func:`arm_label`.
        seeds: the same seeds for every arm, so that arms can be compared seed by seed (paired). Five by
            default: corrected over ~10 settings, a paired t test finds (80% power) effects of ~3 sd of the
            per-seed differences with 5 seeds, ~10 sd with 3 (:func:`craftlab.analysis.stats.detectable_effect`).
        model, data, epochs: shared by all arms: the arms differ only in their settings.
        progress: show tqdm bars while training; verbose: print one line per run.

    Returns:
        Columns ``arm, model, data, optimizer, lr, sam_rho, adaptive, seed, epochs, key, path,
        test_accuracy, val_accuracy, train_time_s, cached`` (``cached``: it was already in the cache,
        ``train_time_s`` is then the time measured when it was trained).
    """
    items = _arm_items(arms)
    rows = []
    for label, kw in items:
        for seed in seeds:
            spec = RunSpec(model=model, data=data, optimizer=kw.get("optimizer", "adamw"), lr=kw.get("lr"),
                           epochs=epochs, sam_rho=float(kw.get("sam_rho", 0.0)),
                           adaptive=bool(kw.get("adaptive", False)), seed=int(seed),
                           sam_mode=kw.get("sam_mode", "sam"))
            t0 = time.perf_counter()
            cached = (run_dir(spec) / "craftlab.json").exists()
            path = get_run(spec, progress=progress)
            meta = read_meta(path)
            metrics = meta.get("metrics", {})
            train_time = float(sum(h.get("time_s", 0.0) for h in meta.get("history", [])))
            rows.append({"arm": label, "model": model, "data": data, "optimizer": spec.optimizer, "lr": spec.lr,
                         "sam_rho": spec.sam_rho, "adaptive": spec.adaptive, "seed": spec.seed, "epochs": epochs,
                         "key": spec.key, "path": str(path), "test_accuracy": metrics.get("test_accuracy"),
                         "val_accuracy": metrics.get("val_accuracy"), "train_time_s": train_time,
                         "cached": cached})
            if verbose:
                how = "cached" if cached else f"trained in {time.perf_counter() - t0:.0f} s"
                print(f"{model} {label:<14} seed {seed}: test accuracy {rows[-1]['test_accuracy']:.3f} ({how})",
                      flush=True)
    return pd.DataFrame(rows)


def load_run(row: Mapping[str, Any] | pd.Series) -> nn.Module:
    """The fine-tuned model of one row of :func:`run_arms` (eval mode)."""
    return load_checkpoint(row["path"])


def load_data_for(runs: pd.DataFrame | str = "vit-tiny", data: str | None = None, **kwargs: Any) -> DataBundle:
    """The data bundle the runs were fine-tuned on, with the same input configuration as :func:`craftlab.get_run`.

    ``runs`` is a :func:`run_arms` table (its model and data columns are used) or a model name.
    """
    if isinstance(runs, pd.DataFrame):
        model_name, data_name = runs["model"].iloc[0], runs["data"].iloc[0]
    else:
        model_name, data_name = runs, data or "digits"
    return load_data(data or data_name, model=build_model(model_name), **kwargs)


# ----------------------------------------------------------------------------------------------
# compression sweeps


def setting_label(row: Mapping[str, Any]) -> str:
    """The label of one sweep row (its ``setting`` column; :meth:`craftlab.settings.Setting.label`)."""
    return str(row["setting"]) if row.get("setting") else parse_setting(dict(row)).label()


def compress_kwargs(setting: str | Mapping[str, Any] | Setting) -> dict[str, Any]:
    """Keyword arguments of :func:`craftlab.compress` for a setting (label, dict or Setting)."""
    return parse_setting(setting).compress_kwargs()


def compress_setting(model: nn.Module, data: DataBundle, setting: str | Mapping[str, Any]) -> nn.Module:
    """``craftlab.compress`` of `model` under one setting (label or dict), calibrated on ``data.calib``."""
    from ..compression.pipeline import compress

    return compress(model, calib=data.calib, **compress_kwargs(setting))


def sweep_runs(runs: pd.DataFrame, data: DataBundle, settings: Iterable[Mapping[str, Any]] | None = None,
               split: str = "test", progress: bool = False, **grid: Any) -> pd.DataFrame:
    """:func:`craftlab.sweep` over every run of :func:`run_arms`: one row per (run, setting).

    Adds the run's columns (``arm, seed, sam_rho, adaptive, optimizer``), ``setting`` (a label,
    see :func:`setting_label`), ``bits`` (``W4A8`` for quantization rows) and ``bitops_per_mac``
    (w_bits × a_bits, 16 for a float side; 32 × 32 for FP32 rows).
    """
    frames = []
    for _, row in runs.iterrows():
        label = f"{row['arm']} / seed {row['seed']}"
        extra = {label: {c: row[c] for c in ("arm", "seed", "sam_rho", "adaptive", "optimizer") if c in row}}
        frames.append(sweep({label: load_run(row)}, data, settings=settings, split=split, progress=progress,
                            extra_columns=extra, **grid))
    df = pd.concat(frames, ignore_index=True)
    df["n_test"] = len(data.loader(split).dataset)
    quant = df["kind"] == "quant"
    df["bits"] = [bits_label(w, a) if q else None for w, a, q in zip(df["w_bits"], df["a_bits"], quant)]

    def bpm(w: Any, a: Any, kind: str) -> float:
        if kind == "fp":
            return 32.0 * 32.0
        if kind != "quant":
            return float("nan")
        wf = 16.0 if w is None or (isinstance(w, float) and math.isnan(w)) else float(w)
        af = 16.0 if a is None or (isinstance(a, float) and math.isnan(a)) else float(a)
        return wf * af

    df["bitops_per_mac"] = [bpm(w, a, k) for w, a, k in zip(df["w_bits"], df["a_bits"], df["kind"])]
    return df


# ----------------------------------------------------------------------------------------------
# the CrAFT benchmark (benchmarks/bench_craft.py): its grid, its table, its claim checks

BENCH_ARMS: dict[str, tuple[float, bool]] = {"AdamW": (0.0, False), "SAM 0.05": (0.05, False),
                                             "SAM 0.1": (0.1, False), "ASAM 0.5": (0.5, True)}
"""The benchmark's arms: label -> (SAM ρ, adaptive); all on AdamW's schedule and seeds."""
BENCH_BASELINE = "AdamW"
BENCH_MODELS = ("vit-tiny", "resnet-tiny")
BENCH_SEEDS = (0, 1, 2, 3, 4)
BENCH_EPOCHS = 8
BENCH_ALPHA = 0.05


def bench_settings(name: str) -> list[Setting]:
    """The benchmark's compression settings for model `name`: :func:`craftlab.settings_grid`, plus the
    BatchNorm re-estimated ones for resnet-tiny (vit-tiny has no BatchNorm)."""
    from ..distributed.sweep import settings_grid

    grid = settings_grid()
    if name == "resnet-tiny":
        grid += [s for s in settings_grid(recalibrate_bn=True) if s.recalibrate_bn]
    return grid


def bench_table(models: Sequence[str] = BENCH_MODELS, seeds: Sequence[int] = BENCH_SEEDS,
                arms: Mapping[str, tuple[float, bool]] = BENCH_ARMS, epochs: int = BENCH_EPOCHS,
                data: str = "digits", log: Any = None) -> pd.DataFrame:
    """Fine-tune every (model, seed, arm) from the zoo model (not through the run cache) and sweep its settings:
    one row per (model, seed, arm, setting) with :func:`craftlab.sweep`'s columns and ``arch``, ``arm``,
    ``seed``, ``train_time_s``. `log` (a file) gets one line per run.

    >>> df = bench_table(models=("vit-tiny",), seeds=(0,), epochs=1)  # doctest: +SKIP
    """
    from ..train.finetune import finetune
    from ..train.pretrain import create_model

    frames = []
    for name in models:
        bundle = load_data(data, model=build_model(name))
        settings = bench_settings(name)
        for seed in seeds:
            base = create_model(name, num_classes=bundle.num_classes, seed=seed)
            for arm, (rho, adaptive) in arms.items():
                t0 = time.perf_counter()
                res = finetune(base, bundle, epochs=epochs, sam_rho=rho, adaptive=adaptive, seed=seed,
                               progress=False)
                wall = time.perf_counter() - t0
                df = sweep({arm: res.model}, bundle, settings, progress=False)
                df["arch"], df["arm"], df["seed"], df["train_time_s"] = name, arm, seed, wall
                frames.append(df)
                if log is not None:
                    print(f"  {name} seed {seed} {arm}: FP {df.accuracy.iloc[0]:.3f} ({wall:.0f}s)", file=log,
                          flush=True)
    return pd.concat(frames, ignore_index=True)


def bench_claims(df: pd.DataFrame, baseline: str = BENCH_BASELINE, arms: Sequence[str] | None = None,
                 alpha: float = BENCH_ALPHA) -> tuple[pd.DataFrame, dict[tuple[str, str], Any]]:
    """The claim check of every (model, arm ≠ baseline): accuracy differences to `baseline` paired by seed over
    the compressed settings, paired t-test, Holm across that arm's settings
    (:func:`craftlab.analysis.stats.compare_arms`), and its :func:`~craftlab.analysis.stats.claim_verdict`.
    Returns (one table with ``arch`` and ``arm`` columns, {(arch, arm): Verdict}).

    >>> table, verdicts = bench_claims(bench_table(models=("vit-tiny",), seeds=(0, 1)))  # doctest: +SKIP
    """
    from ..analysis.stats import claim_verdict, compare_arms

    arms = [a for a in (BENCH_ARMS if arms is None else arms) if a != baseline]
    frames, verdicts = [], {}
    for arch, part in df.groupby("arch", sort=False):
        compressed = part[part["setting"] != "FP32"]
        for arm in arms:
            cmp = compare_arms(compressed, baseline, arm, value="accuracy", test="t", correction="holm",
                               alpha=alpha)
            cmp["arch"], cmp["arm"] = arch, arm
            frames.append(cmp)
            verdicts[(arch, arm)] = claim_verdict(
                cmp, claim=f"{arm} loses less accuracy under compression than {baseline} ({arch})", alpha=alpha,
                scale=100, unit=" pts")
    return pd.concat(frames, ignore_index=True), verdicts
