"""Evolutionary search for the best subnet under a BitOPs budget, the Pareto front, and a persistent cache.

The search is OFA's ``EvolutionFinder`` (APQ uses the same scheme) with direct evaluation on the validation split
instead of an accuracy predictor: a population of valid configurations; each generation keeps the best
``parent_ratio`` as parents (elitism), adds ``mutation_ratio`` of the population as mutants of random parents
(each gene resampled with probability ``mutate_prob``) and the rest as uniform crossovers of two parents.

Reconstruction choices (the paper's search is not published): a configuration over the budget is *repaired* by
lowering random genes one step (a bit-width or a structural value) until it fits, rather than rejected and
resampled, so tight budgets stay searchable; the first population also holds every uniform-bit subnet that fits
(so the search starts at least as good as the best uniform subnet). Fitness: validation accuracy, ties broken by
fewer BitOPs. The subnet *reported* is chosen by :func:`select` (:mod:`craftlab.supernet.selection`): the most
accurate one, except that mixed-precision subnets must beat the best uniform subnet under the budget by more than
:data:`MARGIN_SE` standard errors **held out over** :data:`SPLITS` **repeated random splits** of the validation
images (chosen on one half, compared per image on the other: the winner of hundreds of noisy comparisons is
otherwise a winner's curse). A CNN's subnets are scored with BatchNorm statistics re-estimated for each of them on
the calibration images (``bn="subnet"``).

Every subnet's per-image correctness is cached by configuration in
``$CRAFTLAB_HOME/supernet-search/<supernet>-<data>-img.json`` (the supernet's fingerprint: any change of its weights
is a new file), so a repeated search (deterministic for a seed) costs only the BitOPs arithmetic.

Example::

    report = search_budgets(sn, data, ["3%", "4%", "6%"])   # % of the FP32 model's BitOPs
    report.table()                                           # best subnet per budget
    report.pareto                                            # accuracy vs BitOPs front of all evaluated subnets
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import cache as _cache
from ..cache import atomic_write_json, read_json
from ..data import DataBundle
from ..train.finetune import eval_loader
from .model import Supernet
from .selection import MARGIN_SE, SPLITS, is_uniform, select, split_estimate, standard_error
from .space import SubnetConfig, parse_budget

__all__ = ["AccuracyCache", "BN_MODES", "MARGIN_SE", "SPLITS", "SearchReport", "SearchResult", "evaluate_configs",
           "evolutionary_search", "is_uniform", "pareto_front", "search_budgets", "select", "split_estimate",
           "standard_error"]


class AccuracyCache:
    """Accuracy of configurations of one supernet on one data split, kept in a JSON file (None: memory only)."""

    def __init__(self, path: Path | None):
        self.path, self.dirty = path, False
        self.values = (read_json(path) if path is not None else None) or {}

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        atomic_write_json(self.path, self.values)
        self.dirty = False


def _batches(supernet: Supernet, data: DataBundle, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dev = next(supernet.parameters()).device
    return [(x.to(dev), y.to(dev)) for x, y in eval_loader(data, split, batch_size=256)]


BN_MODES = ("subnet", "shared")
"""BatchNorm statistics a subnet is scored with: re-estimated for it on the calibration images (``subnet``, OFA's
per-subnet BN; the default) or the shared ones training left (``shared``). Models without BN ignore it."""

def _bn_calib(supernet: Supernet, data: DataBundle, bn: str) -> list | None:
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if bn == "shared" or not supernet.has_batchnorm():
        return None
    dev = next(supernet.parameters()).device
    return [x.to(dev) for x, _ in data.calib]


def _correct(supernet: Supernet, batches: list, cfg: SubnetConfig, bn_calib: list | None = None) -> torch.Tensor:
    """Per-image correctness (bool, in the split's order) of subnet `cfg`."""
    was_training = supernet.training
    supernet.eval()
    out = []
    try:
        with supernet.using(cfg), supernet.subnet_bn(bn_calib), torch.inference_mode():
            for x, y in batches:
                out.append((supernet(x).argmax(1) == y).cpu())
    finally:
        supernet.train(was_training)
    return torch.cat(out)


def _accuracy(supernet: Supernet, batches: list, cfg: SubnetConfig, bn_calib: list | None = None) -> float:
    hits = _correct(supernet, batches, cfg, bn_calib)
    return int(hits.sum()) / len(hits)  # exact in float64 (a float32 mean is off by ~1e-9)


def evaluate_configs(supernet: Supernet, data: DataBundle, configs: list[SubnetConfig],
                     split: str = "test", bn: str = "subnet") -> list[dict[str, Any]]:
    """Accuracy on `split` and the costs of each configuration (rows: ``label``, ``accuracy``, ``bitops``, ...);
    `bn`: :data:`BN_MODES`."""
    batches, calib = _batches(supernet, data, split), _bn_calib(supernet, data, bn)
    return [{"label": supernet.space.label(c), "config": c, "accuracy": _accuracy(supernet, batches, c, calib),
             "n": sum(len(y) for _, y in batches), **supernet.cost(c)} for c in configs]


def pareto_front(points: list[dict[str, Any]], x: str = "bitops", y: str = "accuracy") -> list[dict[str, Any]]:
    """The points no other point beats on both (fewer `x`, higher `y`), by increasing `x`."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[x], -p[y])):
        if p[y] > best:
            front.append(p)
            best = p[y]
    return front


@dataclass
class SearchResult:
    """The best subnet found under one budget, with per-generation progress."""

    budget: float
    best: dict[str, Any]
    history: list[dict[str, float]]
    evaluated: int
    time_s: float
    top: dict[str, Any] | None = None
    """The most accurate subnet found (``best`` unless the selection rule kept a uniform one)."""
    rule: str = ""
    estimate: dict[str, Any] | None = None
    """The selection rule's held-out mixed − uniform estimate over repeated splits
    (:func:`craftlab.supernet.selection.split_estimate`; None when the most accurate subnet is uniform)."""


@dataclass
class SearchReport:
    """Results of several budgets, every evaluated point and their Pareto front."""

    results: list[SearchResult]
    points: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    references: dict[str, float]
    time_s: float
    cache_path: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Any:
        """pandas DataFrame: per budget the best subnet's label, validation accuracy, BitOPs, % of FP32, size."""
        import pandas as pd

        fp32 = self.references["FP32"]
        return pd.DataFrame([{"budget": r.budget, "budget_pct_fp32": 100 * r.budget / fp32,
                              "label": r.best["label"], "val_accuracy": r.best["accuracy"],
                              "bitops": r.best["bitops"], "bitops_pct_fp32": 100 * r.best["bitops"] / fp32,
                              "size_mb": r.best["size_mb"], "evaluated": r.evaluated, "time_s": r.time_s,
                              "rule": r.rule}
                             for r in self.results])


class _Searcher:
    def __init__(self, supernet: Supernet, data: DataBundle, split: str, use_cache: bool, bn: str = "subnet"):
        self.sn, self.space = supernet, supernet.space
        self.batches = _batches(supernet, data, split)
        self.calib = _bn_calib(supernet, data, bn)
        self.n = sum(len(y) for _, y in self.batches)
        path = None
        if use_cache:
            ident = f"{data.name}-s{data.seed}-{split}-n{self.n}" + ("-bnsubnet" if self.calib is not None else "")
            path = _cache.subdir("supernet-search") / f"{supernet.fingerprint()[:20]}-{ident}-img.json"
        self.cache = AccuracyCache(path)  # key -> per-image correctness as a "0101..." string
        self.new = 0
        self.seen: dict[str, dict[str, Any]] = {}
        self.correct: dict[str, np.ndarray] = {}

    def score(self, cfg: SubnetConfig) -> dict[str, Any]:
        cfg = self.space.canonical(cfg)
        key = cfg.key()
        if key not in self.seen:
            bits = self.cache.values.get(key)
            if not isinstance(bits, str) or len(bits) != self.n:
                hits = _correct(self.sn, self.batches, cfg, self.calib)
                bits = self.cache.values[key] = "".join("1" if h else "0" for h in hits.tolist())
                self.cache.dirty, self.new = True, self.new + 1
            self.correct[key] = np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")
            cost = self.sn.cost(cfg)
            self.seen[key] = {"label": self.space.label(cfg), "config": cfg,
                              "accuracy": float(self.correct[key].mean()),
                              "bitops": cost["bitops"], "size_mb": cost["size_mb"], "macs": cost["macs"]}
        return self.seen[key]

    def repair(self, cfg: SubnetConfig, budget: float, rng: random.Random) -> SubnetConfig:
        while self.sn.bitops(cfg) > budget:
            cfg = self.space.lower(cfg, rng)  # never None: the smallest subnet fits (checked before)
        return self.space.canonical(cfg)


def _check_budget(supernet: Supernet, budget: Any) -> float:
    refs = supernet.references()
    value = parse_budget(budget, refs["FP32"])
    low = supernet.bitops(supernet.space.smallest())
    if value < low:
        raise ValueError(f"budget {value:.4g} BitOPs is below the smallest subnet of this supernet: "
                         f"{low:.4g} BitOPs ({100 * low / refs['FP32']:.2f}% of FP32, "
                         f"{supernet.space.label(supernet.space.smallest())}); use a budget of at least that")
    return value


def evolutionary_search(supernet: Supernet, data: DataBundle, budget: Any, *, split: str = "val",
                        population: int = 16, generations: int = 6, parent_ratio: float = 0.25,
                        mutation_ratio: float = 0.5, mutate_prob: float = 0.1, seed: int = 0,
                        cache: bool = True, bn: str = "subnet", margin_se: float = MARGIN_SE, splits: int = SPLITS,
                        _searcher: _Searcher | None = None) -> SearchResult:
    """The best subnet with BitOPs <= `budget` (a number, ``"120M"`` or ``"4%"`` of FP32) by evolutionary search on
    `split`, chosen by :func:`select` (mixed subnets must beat the best uniform one by > `margin_se` standard
    errors held out over `splits` random halves of `split`, seeded by `seed`). `bn`: :data:`BN_MODES`.
    ValueError (saying the minimum) when the budget is below the smallest subnet."""
    value = _check_budget(supernet, budget)
    if population < 4 or generations < 0 or not 0 < parent_ratio < 1 or not 0 <= mutation_ratio <= 1:
        raise ValueError("need population >= 4, generations >= 0, 0 < parent_ratio < 1, 0 <= mutation_ratio <= 1")
    t0 = time.perf_counter()
    s = _searcher or _Searcher(supernet, data, split, cache, bn)
    new0 = s.new
    rng = random.Random(seed)
    space = supernet.space
    pop = [space.uniform(w, a) for w in space.w_bits for a in space.a_bits]
    pop = [c for c in pop if supernet.bitops(c) <= value]
    while len(pop) < population:
        pop.append(s.repair(space.sample(rng), value, rng))
    scored = [s.score(c) for c in pop]
    rank = lambda p: (-p["accuracy"], p["bitops"])
    history = []
    for gen in range(generations + 1):
        scored = sorted({p["config"].key(): p for p in scored}.values(), key=rank)
        top = scored[:population]
        history.append({"generation": gen, "best_accuracy": top[0]["accuracy"],
                        "mean_accuracy": sum(p["accuracy"] for p in top) / len(top)})
        if gen == generations:
            break
        parents = scored[: max(2, int(parent_ratio * population))]
        children = []
        for i in range(population):
            if i < int(mutation_ratio * population):
                child = space.mutate(rng.choice(parents)["config"], rng, mutate_prob)
            else:
                a, b = rng.sample(parents, 2) if len(parents) > 1 else (parents[0], parents[0])
                child = space.crossover(a["config"], b["config"], rng)
            children.append(s.score(s.repair(child, value, rng)))
        scored = parents + children
    top = min((p for p in s.seen.values() if p["bitops"] <= value), key=rank)
    best, why, est = select(list(s.seen.values()), value, s.n, space, margin_se, correct=s.correct, splits=splits,
                            seed=seed)
    if _searcher is None:
        s.cache.save()
    return SearchResult(value, best, history, s.new - new0, time.perf_counter() - t0, top, why, est)


def search_budgets(supernet: Supernet, data: DataBundle, budgets: list[Any], *, split: str = "val",
                   population: int = 16, generations: int = 6, seed: int = 0, cache: bool = True,
                   bn: str = "subnet", **kwargs: Any) -> SearchReport:
    """:func:`evolutionary_search` for each budget (sharing evaluations), every evaluated point and their Pareto
    front. Budgets are checked before any search."""
    if not isinstance(data, DataBundle):
        raise TypeError("data must be a craftlab DataBundle (see craftlab.load_data)")
    if not budgets:
        raise ValueError("give at least one budget")
    for b in budgets:
        _check_budget(supernet, b)
    t0 = time.perf_counter()
    s = _Searcher(supernet, data, split, cache, bn)
    results = [evolutionary_search(supernet, data, b, split=split, population=population, generations=generations,
                                   seed=seed, _searcher=s, **kwargs) for b in budgets]
    s.cache.save()
    points = list(s.seen.values())
    args = {"split": split, "population": population, "generations": generations, "seed": seed, "bn": bn,
            "n": s.n, **kwargs}
    return SearchReport(results, points, pareto_front(points), supernet.references(), time.perf_counter() - t0,
                        str(s.cache.path) if s.cache.path else None, args)
