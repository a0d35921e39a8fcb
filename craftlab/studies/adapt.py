"""LAST / MIET's study: the adaptation methods side by side and their accuracy curves at tuned learning rates.

**Side by side** (:func:`compare_methods`): every arm of :data:`~craftlab.adapt.methods.ARMS` (derived from the
method registry) over seeds — accuracy, trainable parameters, training memory, time per epoch, bytes per image —
and the K-way speed-up of training side networks at once (:func:`kway_speedup`). ``benchmarks/bench_adapt.py``,
the app's Adapt tab and notebook 06 run it; the claim checks go through :mod:`craftlab.analysis.stats`.

**Curves** (:func:`adapt_curves`): accuracy against epochs and against training wall time, each method at its own
tuned learning rate.

A comparison at one budget with hand-set learning rates can favour whichever method's rate happened to fit that
budget. Here every arm trains at every learning rate of a small grid (:func:`lr_grid`: its default ÷3, ×1, ×3)
and every seed for ``epochs`` epochs; the validation and test accuracy are read after each epoch. Each arm's rate
is the one with the highest mean *validation* accuracy at the last epoch (ties: the lower mean validation loss,
then the smaller rate); the test split never chooses anything. The curve of an arm is its chosen rate's runs,
averaged over seeds, epoch by epoch, with the cumulative training wall time (evaluation excluded).

The schedule is the recipe's cosine over the whole run: epoch e of an ``epochs``-epoch curve is *not* an
``e``-epoch run (that one would have annealed to 0 at e); only the last point is the ``epochs``-epoch run
(:func:`craftlab.adapt.recipes.adapt_model` with the same arguments gives the same numbers).

Example::

    df = compare_methods(craftlab.create_model("vit-tiny", num_classes=10), data, seeds=[0, 1, 2])
    cv = adapt_curves(model, data, seeds=[0, 1])
"""

from __future__ import annotations

import copy
import math
import numbers
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapt.methods import ARMS, COMMON, DEFAULT_LR, DEFAULT_RANK, LAST, LORA, MAIN_ARMS, MIET
from ..adapt.parallel import fit_one, fit_parallel
from ..adapt.recipes import adapt_model, build_side, configure, side_spec, sources
from ..adapt.steps import method_memory
from ..data import DataBundle
from ..registry import ADAPT_METHODS

__all__ = ["CURVE_ARMS", "LR_FACTORS", "PAIRS", "Curves", "adapt_curves", "choose", "compare_methods",
           "kway_speedup", "lr_grid", "paired_tests", "reading", "summarize"]


# ----------------------------------------------------------------------------------------------
# the methods side by side


def _memory_kwargs(kw: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("rank", "heads", "gap", "k", "lora_rank", "sam_rho")
    return {key: kw[key] for key in keys if key in kw}


def compare_methods(model: nn.Module, data: DataBundle, arms: Mapping[str, Mapping[str, Any]] | None = None,
                    seeds: Sequence[int] = (0, 1, 2), epochs: int = 8, gap: int = 1, k: int | None = None,
                    progress: bool = False, **common: Any) -> Any:
    """Every arm (default: the :data:`~craftlab.adapt.methods.MAIN_ARMS` of the arms table
    :data:`~craftlab.adapt.methods.ARMS`) at every seed, on the same data and budget: a
    DataFrame with one row per
    (arm, seed): ``arm``, ``method``, ``seed``, ``val_accuracy``, ``test_accuracy``, ``trainable_params``,
    ``time_per_epoch_s``, and per arm (measured once, on one training batch) ``saved_bytes``, ``grad_bytes``,
    ``optimizer_bytes``, ``input_bytes`` (the image batch, or the tapped features a side method trains on),
    ``memory_bytes`` (their sum) and ``bytes_per_image`` (what it sends per image;
    fine-tuning: the image itself).

    >>> df = compare_methods(craftlab.create_model("vit-tiny", num_classes=10), data, seeds=[0, 1, 2])  # doctest: +SKIP
    """
    import pandas as pd

    arms = dict({k: ARMS[k] for k in MAIN_ARMS} if arms is None else arms)
    x, y = next(iter(data.loader("train", shuffle=False)))
    rows = []
    for label, kw in arms.items():
        kw = {"gap": gap, "k": k, **common, **kw}
        method = kw.pop("method")
        own = ADAPT_METHODS.get(method).option_names()
        for key in ("gap", "k"):  # the study's defaults, for the methods that have them
            if key not in own:
                kw.pop(key, None)
        mem = method_memory(model, x, y, method, num_classes=data.num_classes, **_memory_kwargs(kw)).as_dict()
        per_image = _sent_per_image(model, x[0], method, kw)
        for seed in seeds:
            t0 = time.perf_counter()
            res = adapt_model(model, data, method, epochs=epochs, seed=seed, **kw)
            if progress:
                print(f"  {label} seed {seed}: test {res.metrics['test_accuracy']:.3f} "
                      f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
            rows.append({"arm": label, "method": method, "seed": seed, **res.metrics,
                         "trainable_params": res.trainable_params, "time_per_epoch_s": res.time_per_epoch_s,
                         "saved_bytes": mem["saved_bytes"], "grad_bytes": mem["grad_bytes"],
                         "optimizer_bytes": mem["optimizer_bytes"], "input_bytes": mem["input_bytes"],
                         "memory_bytes": mem["total_bytes"],
                         "bytes_per_image": per_image, "lr": res.config["lr"]})
    return pd.DataFrame(rows)


def _sent_per_image(model: nn.Module, image: torch.Tensor, method: str, kw: Mapping[str, Any]) -> int:
    """Bytes per image `method` sends to a device (fine-tuning there: the image)."""
    return configure(method, **{k: v for k, v in kw.items() if k in COMMON}).sent_per_image(model, image)


def kway_speedup(model: nn.Module, data: DataBundle, ks: Sequence[int] = (1, 4, 8, 16), method: str = "last",
                 epochs: int = 1, cache: str | None = None, rank: int = DEFAULT_RANK, gap: int = 1,
                 lrs: Sequence[float] | None = None, seed: int = 0) -> Any:
    """Wall time of training K side networks (learning rates spread over `lrs`, default DEFAULT_LR × 0.1 … 3)
    K-way in one go vs one after another (:func:`~craftlab.adapt.parallel.fit_one` each, its own backbone
    passes when ``cache=None``): a DataFrame ``K``, ``parallel_s``, ``sequential_s``, ``speedup``,
    ``backbone_passes_parallel``, ``backbone_passes_sequential``."""
    import numpy as np
    import pandas as pd

    if any(kk < 1 for kk in ks):
        raise ValueError(f"K must be >= 1, got {list(ks)}")
    taps, view = side_spec(model, method, gap=gap, rank=rank)
    rows = []
    for K in ks:
        grid = list(lrs) if lrs is not None else list(DEFAULT_LR[method] * np.geomspace(0.1, 3, K))
        grid = (grid * K)[:K]
        nets = [build_side(model, method, taps, data.num_classes, rank=rank, seed=seed + i) for i in range(K)]
        src = sources(model, data, taps, view, cache, torch.device("cpu"), splits=("train",))["train"]
        t0 = time.perf_counter()
        fit_parallel(nets, src, epochs=epochs, lrs=grid, batch_size=data.batch_size, seed=seed)
        par, par_passes = time.perf_counter() - t0, src.backbone_passes
        seq, seq_passes = 0.0, 0
        for net, lr in zip(nets, grid):
            src = sources(model, data, taps, view, cache, torch.device("cpu"), splits=("train",))["train"]
            t0 = time.perf_counter()
            fit_one(copy.deepcopy(net), src, epochs=epochs, lr=lr, batch_size=data.batch_size, seed=seed)
            seq += time.perf_counter() - t0
            seq_passes += src.backbone_passes
        rows.append({"K": K, "parallel_s": par, "sequential_s": seq, "speedup": seq / par,
                     "backbone_passes_parallel": par_passes, "backbone_passes_sequential": seq_passes})
    return pd.DataFrame(rows)


PAIRS = ((LORA, LAST), ("full", LAST), (LORA, MIET), ("linear probe", MIET),
         (MIET, configure("miet", bits=8).label()), (MIET, configure("miet", bits=4).label()))
"""The adaptation benchmark's comparisons (baseline, treatment), labels of :data:`~craftlab.adapt.methods.ARMS`."""


def paired_tests(df: Any, pairs: Sequence[tuple[str, str]] = PAIRS,
                 value: str = "test_accuracy") -> dict[str, tuple[Any, float]]:
    """Each (baseline, treatment) arm pair of a :func:`compare_methods` table, paired by seed
    (:func:`~craftlab.analysis.stats.compare_paired`, t test), Holm across the pairs: ``"{treatment} vs
    {baseline}"`` → (the Comparison, its Holm-adjusted p).

    >>> paired_tests(pd.read_csv("benchmarks/results/adapt.csv"))[f"{LAST} vs {LORA}"][1]  # doctest: +SKIP
    """
    from ..analysis import stats

    wide = df.pivot(index="seed", columns="arm", values=value)
    comps = [stats.compare_paired(wide[b], wide[t], setting=f"{t} vs {b}") for b, t in pairs]
    p_adj = stats.holm([c.p for c in comps])
    return dict(zip([c.setting for c in comps], zip(comps, (float(p) for p in p_adj))))


# ----------------------------------------------------------------------------------------------
# curves at tuned learning rates


CURVE_ARMS: dict[str, dict[str, Any]] = {k: ARMS[k] for k in (LORA, LAST, "full")}
"""The default arms: the claims ledger's LAST-vs-LoRA endpoint and full fine-tuning (labels as the adaptation
benchmark's)."""

LR_FACTORS = (1 / 3, 1.0, 3.0)
"""The default grid around each method's :data:`~craftlab.adapt.recipes.DEFAULT_LR`."""


def lr_grid(method: str, factors: Sequence[float] = LR_FACTORS) -> list[float]:
    """The learning rates tried for `method`: its default rate times each factor, rounded to 3 significant digits.

    >>> lr_grid("last")
    [0.00333, 0.01, 0.03]
    """
    if method not in ADAPT_METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; choose one of {list(ADAPT_METHODS.names())}")
    return [float(f"{DEFAULT_LR[method] * f:.3g}") for f in factors]


@dataclass
class Curves:
    """What :func:`adapt_curves` measured.

    ``runs``: one row per (arm, lr, seed, epoch): ``val_accuracy``, ``val_loss``, ``test_accuracy``, ``time_s``
    (that epoch's training), ``cum_time_s``. ``grid``: one row per (arm, lr): last-epoch ``val_accuracy`` /
    ``val_loss`` / ``test_accuracy`` means over seeds, ``val_sd``, ``chosen``. ``curves``: one row per (arm, epoch)
    at the chosen rate: ``lr``, means over seeds of ``val_accuracy``, ``test_accuracy``, ``cum_time_s``, the sd
    over seeds of ``test_accuracy`` and ``seeds``."""

    runs: Any
    grid: Any
    curves: Any

    @property
    def chosen(self) -> dict[str, float]:
        """Arm → the learning rate chosen on validation."""
        g = self.grid[self.grid["chosen"]]
        return dict(zip(g["arm"], g["lr"].astype(float)))


def _check(arms: Mapping[str, Mapping[str, Any]], lrs: Mapping[str, Sequence[float]], seeds: Sequence[int],
           epochs: Any) -> None:
    if not arms:
        raise ValueError("adapt_curves needs at least one arm")
    for label, kw in arms.items():
        if kw.get("method") not in ADAPT_METHODS:
            raise ValueError(f"arm {label!r} needs a 'method' among {list(ADAPT_METHODS.names())}, "
                             f"got {kw.get('method')!r}")
        if "lr" in kw or "callback" in kw:
            raise ValueError(f"arm {label!r}: the learning rate comes from the grid (lrs), not the arm")
    for label, grid in lrs.items():
        if label not in arms:
            raise ValueError(f"lrs names an unknown arm {label!r}; arms: {list(arms)}")
        if len(grid) < 1 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 for v in grid):
            raise ValueError(f"the learning rates of {label!r} must be numbers > 0 (at least one), got {list(grid)}")
        if len(set(grid)) != len(grid):
            raise ValueError(f"the learning rates of {label!r} repeat: {list(grid)}")
    if len(seeds) < 1 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be integers (at least one), got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {list(seeds)}")
    if not (isinstance(epochs, numbers.Integral) and not isinstance(epochs, bool) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")


def choose(grid: Any) -> Any:
    """Mark each arm's chosen rate in a grid table (``arm``, ``lr``, ``val_accuracy``, ``val_loss``): the highest
    validation accuracy, then the lowest validation loss, then the smallest rate. Returns a copy with ``chosen``.

    >>> choose(pd.DataFrame({"arm": ["a", "a"], "lr": [.1, .3], "val_accuracy": [.9, .95], "val_loss": [1, 1]}))
    ... # doctest: +SKIP
    """
    order = grid.sort_values(["arm", "val_accuracy", "val_loss", "lr"], ascending=[True, False, True, True],
                             kind="stable")
    best = set(order.groupby("arm", sort=False).head(1).index)
    return grid.assign(chosen=[i in best for i in grid.index])


def adapt_curves(model: nn.Module, data: DataBundle, arms: Mapping[str, Mapping[str, Any]] | None = None,
                 lrs: Mapping[str, Sequence[float]] | None = None, seeds: Sequence[int] = (0, 1), epochs: int = 8,
                 widen: int = 0, progress: bool = False, device: str | torch.device = "cpu") -> Curves:
    """Accuracy-vs-epochs and accuracy-vs-wall-time curves, each arm at the learning rate chosen on validation.

    Args:
        arms: label → :func:`~craftlab.adapt.recipes.adapt_model` arguments with a ``method`` and no ``lr``
            (default :data:`CURVE_ARMS`: LoRA, LAST, full fine-tuning).
        lrs: label → the learning rates tried (default :func:`lr_grid` of the arm's method).
        seeds: every (arm, rate) trains at each seed (same data order per seed across arms).
        epochs: the budget; the cosine schedule spans it.
        widen: rounds in which an arm whose chosen rate is the smallest or largest of its grid tries one more
            rate beyond it (÷3 or ×3), so that the choice ends inside the grid when the rounds allow.

    Every run is :func:`~craftlab.adapt.recipes.adapt_model` (the caller's model is not changed), evaluated on
    the validation and test splits after each epoch.

    >>> cv = adapt_curves(craftlab.create_model("vit-tiny", num_classes=10), data, seeds=[0, 1])  # doctest: +SKIP
    >>> cv.chosen, cv.curves[cv.curves["epoch"] == 8]                                              # doctest: +SKIP
    """
    import pandas as pd

    from ..evaluation import evaluate
    from ..train.finetune import eval_loader

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise TypeError("data must be a craftlab DataBundle (see craftlab.load_data / craftlab.from_tensors)")
    arms = {k: dict(v) for k, v in (CURVE_ARMS if arms is None else arms).items()}
    lrs = {k: list(v) for k, v in (lrs or {}).items()}
    seeds = list(seeds)
    _check(arms, lrs, seeds, epochs)
    if not (isinstance(widen, numbers.Integral) and not isinstance(widen, bool) and widen >= 0):
        raise ValueError(f"widen must be an integer >= 0, got {widen!r}")
    rows = []
    for label, kw in arms.items():
        kw = dict(kw)
        method = kw.pop("method")
        for lr in lrs.get(label) or lr_grid(method):
            for seed in seeds:
                test_acc: list[float] = []

                def on_epoch(rec: dict[str, float], net: nn.Module, test_acc: list[float] = test_acc) -> None:
                    test_acc.append(evaluate(net, eval_loader(data, "test"))["accuracy"])

                res = adapt_model(model, data, method, epochs=int(epochs), lr=float(lr), seed=int(seed),
                                  device=device, callback=on_epoch, **kw)
                cum = 0.0
                for h, t in zip(res.history, test_acc):
                    cum += h["time_s"]
                    rows.append({"arm": label, "method": method, "lr": float(lr), "seed": int(seed),
                                 "epoch": int(h["epoch"]), "val_accuracy": h["val_accuracy"],
                                 "val_loss": h["val_loss"], "test_accuracy": t, "time_s": h["time_s"],
                                 "cum_time_s": cum})
                if progress:
                    print(f"  {label} lr {lr:g} seed {seed}: val {res.metrics['val_accuracy']:.3f} "
                          f"test {test_acc[-1]:.3f} ({cum:.1f} s)", file=sys.stderr, flush=True)
    cv = summarize(pd.DataFrame(rows))
    order = {a: i for i, a in enumerate(arms)}
    for _ in range(int(widen)):  # each round looks at every rate tried so far
        more = _beyond_edges(cv)
        if not more:
            break
        extra = adapt_curves(model, data, {a: arms[a] for a in more}, more, seeds, epochs, 0, progress, device)
        runs = pd.concat([cv.runs, extra.runs], ignore_index=True)
        runs = (runs.assign(_arm=runs["arm"].map(order))
                .sort_values(["_arm", "lr", "seed", "epoch"], kind="stable").drop(columns="_arm"))
        cv = summarize(runs.reset_index(drop=True))
    return cv


def _beyond_edges(cv: Curves) -> dict[str, list[float]]:
    """Arm → the one rate beyond its grid's edge, for arms whose chosen rate is at that edge (grids of ≥ 2)."""
    more = {}
    for arm, lr in cv.chosen.items():
        tried = sorted(cv.grid.loc[cv.grid["arm"] == arm, "lr"])
        if len(tried) >= 2 and lr in (tried[0], tried[-1]):
            more[arm] = [float(f"{lr / 3 if lr == tried[0] else lr * 3:.3g}")]
    return more


def summarize(runs: Any) -> Curves:
    """The grid (with each arm's chosen rate, :func:`choose`) and the curves from a table of runs as
    :attr:`Curves.runs` (e.g. read back from ``benchmarks/results/adapt_curves.csv``); the last epoch of the
    table is the budget the rate is chosen at.

    >>> cv = summarize(pd.read_csv("benchmarks/results/adapt_curves.csv"))  # doctest: +SKIP
    """
    need = {"arm", "method", "lr", "seed", "epoch", "val_accuracy", "val_loss", "test_accuracy", "cum_time_s"}
    if missing := need - set(runs.columns):
        raise ValueError(f"a curves table needs the columns {sorted(need)}; missing {sorted(missing)}")
    last = runs[runs["epoch"] == runs["epoch"].max()]
    grid = (last.groupby(["arm", "lr"], sort=False)
            .agg(method=("method", "first"), val_accuracy=("val_accuracy", "mean"), val_sd=("val_accuracy", "std"),
                 val_loss=("val_loss", "mean"), test_accuracy=("test_accuracy", "mean"), seeds=("seed", "nunique"))
            .reset_index())
    grid = choose(grid)
    pick = runs.merge(grid[grid["chosen"]][["arm", "lr"]], on=["arm", "lr"])
    curves = (pick.groupby(["arm", "epoch"], sort=False)
              .agg(lr=("lr", "first"), val_accuracy=("val_accuracy", "mean"), test_accuracy=("test_accuracy", "mean"),
                   test_sd=("test_accuracy", "std"), cum_time_s=("cum_time_s", "mean"), seeds=("seed", "nunique"))
              .reset_index())
    return Curves(runs, grid, curves)


def _acc_at_time(c: Any, t: float) -> tuple[float, int]:
    """Test accuracy (and epoch) of an arm's curve at the last epoch that ended within `t` seconds."""
    done = c[c["cum_time_s"] <= t + 1e-9]
    if done.empty:
        return float("nan"), 0
    r = done.iloc[-1]
    return float(r["test_accuracy"]), int(r["epoch"])


def reading(cv: Curves, ref: str = LORA, arm: str = LAST) -> str:
    """A markdown reading of `arm` against `ref` (and ``full`` when present), every number computed from `cv`:
    the paired difference by seed at the last epoch, the epochs where `arm` leads, the wall times, what each other
    arm had reached within `arm`'s time, and chosen rates left at the edge of their grid ("" when either is absent).

    >>> print(reading(summarize(pd.read_csv("benchmarks/results/adapt_curves.csv"))))  # doctest: +SKIP
    """
    import pandas as pd

    runs, cur = cv.runs, cv.curves
    E = int(runs["epoch"].max())
    if not {ref, arm} <= set(cur["arm"]):
        return ""
    chosen = cv.chosen
    pick = runs.merge(pd.DataFrame({"arm": list(chosen), "lr": list(chosen.values())}), on=["arm", "lr"])

    def paired(base: str, e: int) -> tuple[float, float, float]:
        w = pick[pick["epoch"] == e].pivot_table(index="seed", columns="arm", values="test_accuracy")
        d = (w[arm] - w[base]).to_numpy()
        return float(d.mean()), float(d.min()), float(d.max())

    n_seeds = int(pick["seed"].nunique())
    lines = [f"**Reading** (computed from the table above; {n_seeds} seeds describe the curves, they test nothing):"]
    wins = [e for e in range(1, E + 1) if paired(ref, e)[0] > 0]
    m, lo, hi = paired(ref, E)
    lines.append(f"- At epoch {E}, tuned {arm} − tuned {ref} = {100 * m:+.1f} pp test accuracy (per seed "
                 f"{100 * lo:+.1f} to {100 * hi:+.1f}); {arm}'s mean is ahead at {len(wins)} of {E} epochs"
                 f"{' (' + ', '.join(map(str, wins)) + ')' if wins else ''}.")
    if "full" in set(cur["arm"]):
        mf, lof, hif = paired("full", E)
        lines.append(f"- Tuned {arm} − tuned full fine-tuning at epoch {E}: {100 * mf:+.1f} pp "
                     f"(per seed {100 * lof:+.1f} to {100 * hif:+.1f}).")
    c = {a: cur[cur["arm"] == a].reset_index(drop=True) for a in dict.fromkeys(cur["arm"])}
    t_arm = float(c[arm]["cum_time_s"].iloc[-1])
    t_ref = float(c[ref]["cum_time_s"].iloc[-1])
    lines.append(f"- Training wall time of the {E} epochs (mean over seeds): "
                 + ", ".join(f"{a} {float(v['cum_time_s'].iloc[-1]):.0f} s" for a, v in c.items())
                 + f"; {arm} took {t_arm / t_ref:.0%} of {ref}'s time (one thread on a shared machine: indicative).")
    at = []
    for a, v in c.items():
        if a != arm:
            acc, e = _acc_at_time(v, t_arm)
            at.append(f"{a} had finished {e} epoch(s)" + (f" at {100 * acc:.1f} % test" if e else ""))
    lines.append(f"- In the time {arm} needs for all {E} epochs ({100 * float(c[arm]['test_accuracy'].iloc[-1]):.1f}"
                 " % test): " + "; ".join(at) + f". Epoch e of these curves is a point inside one {E}-epoch cosine "
                 "run, not an e-epoch run (which would have annealed to 0 at e): the curves show what a run of this "
                 "length reaches along the way, not the best run of each shorter length.")
    grid = cv.grid
    span = grid.groupby("arm")["lr"].agg(["min", "max"])
    edge = [f"{r['arm']} ({r['lr']:g})" for r in grid[grid["chosen"]].to_dict("records")
            if r["lr"] in tuple(span.loc[r["arm"]])]
    methods = dict(zip(grid["arm"], grid["method"]))

    def vs_default(a: str, lr: float) -> str:
        ratio = lr / DEFAULT_LR[methods[a]]
        return f"{a} {lr:g} ({'the default' if math.isclose(ratio, 1, rel_tol=1e-3) else f'{ratio:.3g}× the default'})"

    lines.append("- Chosen rates against the defaults that the fixed-budget comparisons use (`DEFAULT_LR`): "
                 + ", ".join(vs_default(a, lr) for a, lr in chosen.items()) + ".")
    lines.append("- Chosen rates left at the edge of their grid (a wider grid could move them): "
                 + (", ".join(edge) if edge else "none") + ".")
    return "\n".join(lines)
