"""Which scored subnet to report under a budget: the selection rule of the search (issue 25).

The evolutionary search ranks hundreds of subnets on one validation split; its most accurate one is a winner's
curse (its validation accuracy is biased upwards by the choice itself). The rule therefore keeps the most accurate
*uniform* subnet that fits unless mixed-precision subnets beat it on images the choice did not see:

* **repeated splits** (:func:`split_estimate`, when the search kept each subnet's per-image correctness): the
  validation images are split ``splits`` times at random into a *selection* half and an *estimate* half; on each
  split the most accurate mixed and the most accurate uniform subnet **on the selection half** are compared **on
  the estimate half** (paired, per image). The pooled estimate is the mean difference over the splits, its
  standard error the root mean square of the per-split paired standard errors (one half-split's precision: the
  splits share images, so repeating them buys no extra credit). The mixed subnet (the most accurate one on the
  whole split, as cross-validation refits on all the data) is reported only if the pooled difference is above
  :data:`MARGIN_SE` standard errors;
* **without per-image data** (accuracies only): the two accuracies as independent binomial proportions on ``n``
  images (:func:`standard_error`), the top mixed against the top uniform on the same images.

Example::

    pick, why, est = select(points, budget, n, space, correct={key: bool_array, ...})
    est["gain"], est["se"], est["splits"]   # held-out mixed − uniform difference, per split
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

MARGIN_SE = 2.0
"""A mixed-precision subnet replaces the best uniform one only if it is better by more than this many standard
errors of the difference (held out over repeated splits when per-image data exist)."""
SPLITS = 5
"""Random selection/estimate splits of the validation images used by :func:`split_estimate` in the search."""


def is_uniform(space: Any, cfg: Any) -> bool:
    """One weight and one activation bit-width over every layer that runs."""
    active = space.active_layers(cfg)
    return len({cfg.w_bits[i] for i in active}) == 1 and len({cfg.a_bits[i] for i in active}) == 1


def standard_error(p1: float, p2: float, n: int) -> float:
    """Standard error of the difference of two accuracies measured on `n` images each (unpaired binomial).

    >>> round(standard_error(0.9, 0.9, 400), 4)
    0.0212
    """
    return ((p1 * (1 - p1) + p2 * (1 - p2)) / max(n, 1)) ** 0.5


def random_splits(n: int, splits: int = SPLITS, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """`splits` random halves of ``range(n)``: (selection, estimate) index lists, the selection half ``n // 2``
    images; deterministic for `seed`, from a local generator (the caller's RNG is left alone).

    >>> sel, est = random_splits(5, 1, seed=0)[0]
    >>> len(sel), len(est), sorted(sel + est) == list(range(5))
    (2, 3, True)
    """
    if n < 2 or splits < 1:
        raise ValueError(f"need at least 2 images and 1 split, got n={n}, splits={splits}")
    rng = random.Random(seed)
    out = []
    for _ in range(splits):
        perm = rng.sample(range(n), n)
        out.append((perm[: n // 2], perm[n // 2:]))
    return out


def _best(cands: list[dict[str, Any]], correct: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, Any]:
    return min(cands, key=lambda p: (-float(correct[p["config"].key()][idx].mean()), p["bitops"]))


def split_estimate(points: list[dict[str, Any]], correct: dict[str, Sequence[bool]], budget: float, space: Any,
                   splits: int | Sequence[tuple[Sequence[int], Sequence[int]]] = SPLITS,
                   seed: int = 0) -> dict[str, Any] | None:
    """Held-out difference between the best mixed and the best uniform subnet under `budget` over repeated splits
    (module docstring): ``gain`` (mean over splits, fraction), ``se``, ``splits`` (per split: the two labels
    chosen on the selection half, their difference and paired standard error on the estimate half), ``n_select``
    and ``n_estimate`` (images per half, first split). `correct`: configuration key → per-image correctness on
    the validation split; `splits`: a count (:func:`random_splits` with `seed`) or explicit (selection, estimate)
    index pairs. None when the budget holds no mixed or no uniform subnet.

    >>> from craftlab.supernet.space import SearchSpace, SubnetConfig
    >>> space = SearchSpace(layers=("a", "b"), blocks=(None, None), w_bits=(4, 8), a_bits=(8,))
    >>> u, m = space.uniform(4, 8), SubnetConfig(w_bits=(8, 4), a_bits=(8, 8))
    >>> pts = [{"label": "u", "config": u, "bitops": 1}, {"label": "m", "config": m, "bitops": 1}]
    >>> est = split_estimate(pts, {u.key(): [1, 0, 1, 0], m.key(): [1, 1, 1, 1]}, 2, space, [([0], [1, 2, 3])])
    >>> round(est["gain"], 4), est["splits"][0]["uniform"]
    (0.6667, 'u')
    """
    fits = [p for p in points if p["bitops"] <= budget and p["config"].key() in correct]
    mixed = [p for p in fits if not is_uniform(space, p["config"])]
    uniform = [p for p in fits if is_uniform(space, p["config"])]
    if not mixed or not uniform:
        return None
    vec = {p["config"].key(): np.asarray(correct[p["config"].key()], dtype=float) for p in fits}
    n = len(next(iter(vec.values())))
    pairs = random_splits(n, splits, seed) if isinstance(splits, int) else splits
    rows = []
    for sel, est in pairs:
        sel, est = np.asarray(sel, dtype=int), np.asarray(est, dtype=int)
        m, u = _best(mixed, vec, sel), _best(uniform, vec, sel)
        d = vec[m["config"].key()][est] - vec[u["config"].key()][est]
        se = float(d.std(ddof=1) / len(d) ** 0.5) if len(d) > 1 else 0.0
        rows.append({"mixed": m["label"], "uniform": u["label"], "gain": float(d.mean()), "se": se})
    return {"gain": float(np.mean([r["gain"] for r in rows])),
            "se": float(np.mean([r["se"] ** 2 for r in rows]) ** 0.5), "splits": rows,
            "n_select": len(pairs[0][0]), "n_estimate": len(pairs[0][1])}


def select(points: list[dict[str, Any]], budget: float, n: int, space: Any, margin_se: float = MARGIN_SE,
           correct: dict[str, Sequence[bool]] | None = None, splits: int = SPLITS,
           seed: int = 0) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """The subnet to report under `budget` among scored `points`, why, and the held-out estimate (None without
    `correct`): the most accurate one (ties: fewer BitOPs) unless it is mixed-precision and mixed subnets beat the
    most accurate *uniform* subnet that fits by no more than `margin_se` standard errors — then the uniform one is
    kept. With `correct` (per-image correctness by configuration key) the comparison is :func:`split_estimate`'s
    held-out one; without, :func:`standard_error` of the two accuracies on `n` images.

    >>> from craftlab.supernet.space import SearchSpace, SubnetConfig
    >>> space = SearchSpace(layers=("a", "b"), blocks=(None, None), w_bits=(4, 8), a_bits=(8,))
    >>> u, m = space.uniform(4, 8), SubnetConfig(w_bits=(8, 4), a_bits=(8, 8))
    >>> pts = [{"label": "u", "config": u, "accuracy": .90, "bitops": 1}, {"label": "m", "config": m,
    ...        "accuracy": .91, "bitops": 1}]
    >>> select(pts, 2, 400, space)[0]["label"]   # 0.5 SE better: the uniform subnet is kept
    'u'
    """
    fits = [p for p in points if p["bitops"] <= budget]
    if not fits:
        raise ValueError("no scored subnet fits the budget")
    top = min(fits, key=lambda p: (-p["accuracy"], p["bitops"]))
    uniform = [p for p in fits if is_uniform(space, p["config"])]
    if is_uniform(space, top["config"]) or not uniform or margin_se <= 0:
        return top, "most accurate", None
    u = min(uniform, key=lambda p: (-p["accuracy"], p["bitops"]))
    est = split_estimate(fits, correct, budget, space, splits, seed) if correct is not None else None
    if est is not None:
        gain, se = est["gain"], est["se"]
        where = f" held out over {len(est['splits'])} splits ({est['n_estimate']} images each)"
    else:
        gain, se, where = top["accuracy"] - u["accuracy"], standard_error(top["accuracy"], u["accuracy"], n), ""
    if gain > 0 and gain > margin_se * se:
        by = f"{gain / se:.1f} SE" if se > 0 else f"{100 * gain:.1f} pts (no sampling error)"
        return top, f"mixed beats uniform {u['label']} by {by}{where} > {margin_se:g}", est
    ratio = f"{gain / se:+.1f} SE" if se > 0 else f"{100 * gain:+.1f} pts"
    return u, f"uniform kept: mixed subnets are {ratio} better{where} (needs > {margin_se:g})", est
