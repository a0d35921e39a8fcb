"""Paired-by-seed analysis of a (fractional-)factorial composition design.

Input: the long table of :func:`craftlab.studies.compose.compose` (or any table with the factor columns
``sam`` and ``bn`` (booleans), ``compensation`` (``none``/``qwt``/``qwt-v2``), ``seed`` and a value column).
Every contrast is computed **per seed** (all cells of one seed share the fine-tuning run) and tested with
:func:`craftlab.analysis.stats.compare_paired` (paired t; the exact sign-flip p when the differences have
no spread), so the numbers match the ledger's statistics:

- **main effect** of a step (on − off), averaged over the other factors' levels where both cells exist
  (full design: every combination; fractional: against the all-off pipeline);
- **two-way interaction** of two steps: ``(y11 − y01) − (y10 − y00)`` averaged over the rest; negative =
  the gains overlap (sub-additive), positive = synergy. The interactions of a model form one family,
  Holm-corrected;
- **additivity**: the full pipeline's gain over the all-off pipeline minus the sum of each step's gain
  alone (observed − additive prediction);
- **waterfall**: from the all-off pipeline, adding the steps one at a time in a given order, each increment
  with its CI.

Example::

    res = analyze(table)            # table = craftlab.compose("resnet-tiny", seeds=5)
    res.main[["step", "mean_diff", "ci_low", "ci_high", "p"]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .stats import compare_paired, detectable_effect, holm

__all__ = ["FactorialResult", "STEPS", "additivity", "analyze", "interactions", "main_effects", "pair_word",
           "waterfall"]

FACTORS = ("sam", "bn", "compensation", "snt", "supernet")
STEPS: dict[str, tuple[str, Any, Any]] = {
    "SAM": ("sam", True, False), "BN": ("bn", True, False),
    "QwT": ("compensation", "qwt", "none"), "QwT-v2": ("compensation", "qwt-v2", "none"),
    "SNT": ("snt", True, False), "supernet": ("supernet", True, False)}
ALL_OFF = (False, False, "none", False, False)
"""The all-off pipeline's levels, in :data:`FACTORS` order (a factor missing from a table is at this level)."""
"""A step name → (factor column, its "on" level, its "off" level)."""
PAIRS = (("SAM", "QwT"), ("SAM", "QwT-v2"), ("SAM", "BN"), ("BN", "QwT"), ("BN", "QwT-v2"), ("SNT", "SAM"),
         ("SNT", "BN"), ("SNT", "QwT-v2"), ("SAM", "supernet"))
"""The two-way interactions that matter (those whose steps are both in the design are tested)."""


def _grid(table: Any, value: str) -> tuple[list[tuple], np.ndarray, list[int]]:
    """(cells, values seeds × cells, seeds): every cell present for every seed (paired design)."""
    t = table[~table["bn_last"].astype(bool)].copy() if "bn_last" in table else table.copy()
    if "pretrain" in t and "adam" in set(t["pretrain"]) and len(set(t["pretrain"])) > 1:
        raise ValueError("the table mixes the zoo's pretraining ('adam') with the SNT study's ('snt-*'): analyze "
                         "each design alone")
    for f in FACTORS:
        if f not in t:
            t[f] = dict(zip(FACTORS, ALL_OFF))[f]
    t["compensation"] = t["compensation"].fillna("none")
    w = t.pivot_table(index="seed", columns=list(FACTORS), values=value, aggfunc="mean")
    w = w.dropna(axis=0, how="any")
    if len(w) < 1:
        raise ValueError("no seed has every cell of the design: the table is not paired by seed")
    return [tuple(c) for c in w.columns], w.to_numpy(dtype=float), [int(s) for s in w.index]


def _with(cell: tuple, **levels: Any) -> tuple:
    d = dict(zip(FACTORS, cell))
    d.update(levels)
    return tuple(d[f] for f in FACTORS)


def _steps_in(cells: list[tuple]) -> list[str]:
    present = set(cells)
    out = []
    for name, (f, on, off) in STEPS.items():
        if any(_with(c, **{f: on}) in present and _with(c, **{f: off}) in present for c in cells):
            out.append(name)
    return out


EFFECT_OF_INTEREST = 0.03
"""The smallest effect (3 pp, as the ledger's CrAFT claims) the power columns are stated for."""


def _row(kind: str, name: str, c: Any, alpha: float = 0.05, **extra: Any) -> dict[str, Any]:
    """A contrast's row, with its power: the effect this design finds with 80 % power (``detectable``) and the
    seeds the ledger's rule (:func:`~craftlab.analysis.power.seeds_for_power`) asks for at 3 pp."""
    from .power import seeds_for_power

    sd = c.sd_diff if np.isfinite(c.sd_diff) else 0.0
    detect = detectable_effect(c.n, alpha) * sd if c.n >= 2 and sd > 0 else float("nan")
    need = seeds_for_power(EFFECT_OF_INTEREST, sd, alpha, 0.8, min_n=2, max_n=200) if c.n >= 2 else -1
    return {"kind": kind, "step": name, "n": c.n, "off_mean": c.baseline_mean, "on_mean": c.treatment_mean,
            "mean_diff": c.mean_diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p, "test": c.test,
            "sd_diff": c.sd_diff, "detectable": detect, "seeds_for_3pp": need, **extra}


def main_effects(table: Any, value: str = "accuracy", alpha: float = 0.05) -> Any:
    """One row per step: its paired main effect (on − off) with the 1 − α CI and p (a DataFrame)."""
    import pandas as pd

    cells, y, _ = _grid(table, value)
    idx = {c: i for i, c in enumerate(cells)}
    rows = []
    for name in _steps_in(cells):
        f, on, off = STEPS[name]
        pairs = [(idx[_with(c, **{f: on})], idx[c]) for c in cells
                 if dict(zip(FACTORS, c))[f] == off and _with(c, **{f: on}) in idx]
        a = np.mean([y[:, j] for _, j in pairs], axis=0)
        b = np.mean([y[:, i] for i, _ in pairs], axis=0)
        rows.append(_row("main", name, compare_paired(a, b, alpha=alpha), cells_averaged=len(pairs)))
    return pd.DataFrame(rows)


def interactions(table: Any, value: str = "accuracy", alpha: float = 0.05, pairs: tuple = PAIRS) -> Any:
    """The two-way interactions of `pairs` whose four cells the design has, Holm-corrected as one family."""
    import pandas as pd

    cells, y, _ = _grid(table, value)
    idx = {c: i for i, c in enumerate(cells)}
    rows = []
    for s1, s2 in pairs:
        (f1, on1, off1), (f2, on2, off2) = STEPS[s1], STEPS[s2]
        if f1 == f2:
            continue
        quads = []
        for c in cells:
            d = dict(zip(FACTORS, c))
            if d[f1] != off1 or d[f2] != off2:
                continue
            q = [_with(c, **{f1: a, f2: b}) for a, b in ((on1, on2), (off1, off2), (on1, off2), (off1, on2))]
            if all(k in idx for k in q):
                quads.append([idx[k] for k in q])
        if not quads:
            continue
        same = np.mean([y[:, q[0]] + y[:, q[1]] for q in quads], axis=0) / 2
        cross = np.mean([y[:, q[2]] + y[:, q[3]] for q in quads], axis=0) / 2
        # (y11 + y00 − y10 − y01) per seed; compare_paired tests its mean (×2: the interaction contrast)
        c = compare_paired(2 * cross, 2 * same, alpha=alpha)
        rows.append(_row("interaction", f"{s1} × {s2}", c, cells_averaged=len(quads)))
    out = pd.DataFrame(rows)
    if len(out):
        out["p_adj"] = holm(out["p"].to_numpy())
        out["word"] = [pair_word(r, alpha) for r in out.to_dict("records")]
    return out


def pair_word(r: dict[str, Any], alpha: float = 0.05, margin: float = 0.01) -> str:
    """How two steps combine, from an interaction (or additivity) row: ``overlap`` (significantly
    sub-additive), ``synergy`` (significantly super-additive), ``add up`` (CI inside ±`margin`), else
    ``inconclusive``."""
    p = r.get("p_adj", r["p"])
    if p < alpha:
        return "overlap" if r["mean_diff"] < 0 else "synergy"
    if -margin < r["ci_low"] and r["ci_high"] < margin:
        return "add up"
    return "inconclusive"


def additivity(table: Any, value: str = "accuracy", alpha: float = 0.05, compensation: str = "qwt-v2") -> Any:
    """The full pipeline (every step on, `compensation`) vs the all-off pipeline plus the sum of each step's
    gain alone: one row (mean_diff = observed − additive prediction), or an empty frame when a cell is missing."""
    import pandas as pd

    cells, y, _ = _grid(table, value)
    idx = {c: i for i, c in enumerate(cells)}
    names = [n for n in _steps_in(cells) if n in ("SAM", "BN", "SNT") or n == {"qwt": "QwT", "qwt-v2": "QwT-v2"}.get(
        compensation)]
    base = ALL_OFF
    if base not in idx:
        return pd.DataFrame()
    full = dict(zip(FACTORS, base))
    alone = []
    for n in names:
        f, on, _ = STEPS[n]
        full[f] = on
        alone.append(_with(base, **{f: on}))
    full_cell = tuple(full[f] for f in FACTORS)
    if len(names) < 2 or full_cell not in idx or any(a not in idx for a in alone):
        return pd.DataFrame()
    y0 = y[:, idx[base]]
    predicted = y0 + sum(y[:, idx[a]] - y0 for a in alone)
    c = compare_paired(predicted, y[:, idx[full_cell]], alpha=alpha)
    row = _row("additivity", " + ".join(names), c, full_gain=float(np.mean(y[:, idx[full_cell]] - y0)),
               sum_of_parts=float(np.mean(predicted - y0)))
    row["word"] = pair_word(row, alpha)
    return pd.DataFrame([row])


def waterfall(table: Any, order: list[str], value: str = "accuracy", alpha: float = 0.05) -> Any:
    """From the all-off pipeline, add the steps of `order` one at a time: one row per increment (paired CI).
    ValueError naming the missing pipeline when the design lacks a cumulative cell (run ``design="full"``)."""
    import pandas as pd

    cells, y, _ = _grid(table, value)
    idx = {c: i for i, c in enumerate(cells)}
    cur = ALL_OFF
    if cur not in idx:
        raise ValueError("the design has no all-off pipeline to start the waterfall from")
    rows = [{"kind": "start", "step": "compressed", "level": float(y[:, idx[cur]].mean()), "mean_diff": np.nan,
             "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "n": y.shape[0]}]
    for name in order:
        f, on, _ = STEPS[name]
        nxt = _with(cur, **{f: on})
        if nxt not in idx:
            raise ValueError(f"the waterfall needs the pipeline {dict(zip(FACTORS, nxt))} after adding {name}: "
                             "run design='full'")
        c = compare_paired(y[:, idx[cur]], y[:, idx[nxt]], alpha=alpha)
        rows.append({"kind": "step", "step": name, "level": float(y[:, idx[nxt]].mean()), "mean_diff": c.mean_diff,
                     "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p, "n": c.n})
        cur = nxt
    return pd.DataFrame(rows)


@dataclass
class FactorialResult:
    """What :func:`analyze` returns: the three tables and the lines of its reading."""

    main: Any
    interactions: Any
    additivity: Any
    lines: list[str] = field(default_factory=list)


def _seeds(n: int) -> str:
    return "> 200" if n > 200 else str(n)


def _pp(v: float) -> str:
    return f"{100 * v:+.1f}"


def analyze(table: Any, value: str = "accuracy", alpha: float = 0.05) -> FactorialResult:
    """Main effects, the two-way interactions (Holm family) and the additivity test of a design's table, with
    one sentence each (effects in pp with their 1 − α CI)."""
    m, i, a = main_effects(table, value, alpha), interactions(table, value, alpha), additivity(table, value, alpha)
    ci = round(100 * (1 - alpha))
    lines = [f"{r['step']} main effect: {_pp(r['mean_diff'])} pp [{ci}% CI {_pp(r['ci_low'])}, {_pp(r['ci_high'])}], "
             f"p = {r['p']:.2g}" for r in m.to_dict("records")]
    lines += [f"{r['step']} interaction: {_pp(r['mean_diff'])} pp [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}], "
              f"Holm p = {r['p_adj']:.2g} → {r['word']}" + (
                  f" (this design finds ±{100 * r['detectable']:.1f} pp with 80 % power; 3 pp needs "
                  f"{_seeds(r['seeds_for_3pp'])} seeds)" if r["word"] == "inconclusive" else "")
              for r in i.to_dict("records")]
    lines += [f"additivity ({r['step']}): full gain {_pp(r['full_gain'])} pp vs sum of parts {_pp(r['sum_of_parts'])}"
              f" pp; difference {_pp(r['mean_diff'])} [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}], p = {r['p']:.2g}"
              f" → {r['word']}" for r in a.to_dict("records")]
    return FactorialResult(m, i, a, lines)
