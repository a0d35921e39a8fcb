"""Statistics of the claim checks: paired tests, multiplicity correction, effect sizes, verdicts, rank correlation.

Every paper's claim check compares two arms (e.g. AdamW vs AdamW+SAM) over the same seeds at several settings
(e.g. compression settings). :func:`compare_arms` runs one paired test per setting and corrects the p-values
across the settings of that one claim (Holm by default, which controls the family-wise error rate);
:func:`claim_verdict` turns that table into a status and plain sentences, with a power statement saying what
the design could have detected.

Only numpy and scipy are imported here (pandas inside the functions that take or return tables). Randomness
comes from local ``np.random.default_rng(seed)`` generators: the caller's global random state is never touched.

Typical use::

    table = compare_arms(df, "AdamW", "SAM ρ=0.05", value="accuracy")   # one row per setting
    print(claim_verdict(table, claim="SAM makes compression cost less accuracy").text)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import optimize, special
from scipy import stats as _st

__all__ = [
    "Comparison", "Verdict", "adjust", "benjamini_hochberg", "claim_verdict", "cohens_dz", "compare_arms",
    "compare_paired", "detectable_effect", "holm", "mean_ci", "min_attainable_p", "paired_t", "rankdata",
    "sign_flip_pvalue", "spearman", "spearman_test",
]

EXACT_MAX_N = 16
"""The sign-flip test enumerates all 2^n sign patterns up to this many non-zero differences."""

TESTS = ("t", "sign-flip")
STATUSES = ("supports", "partly supports", "contradicts", "mixed", "inconclusive")


def _diffs(diffs: Any) -> np.ndarray:
    d = np.asarray(diffs, dtype=float).ravel()
    if not np.isfinite(d).all():
        raise ValueError(f"the paired differences contain NaN or inf: {d.tolist()}")
    return d


# ----------------------------------------------------------------------------------------------
# paired tests


def sign_flip_pvalue(diffs: Any, n_resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided paired sign-flip permutation p-value of the mean difference.

    Under the null each difference is as likely to have either sign. With ≤ ``EXACT_MAX_N`` non-zero
    differences all 2^n sign patterns are enumerated (exact p); above, `n_resamples` random patterns from a
    local ``default_rng(seed)`` give ``(b + 1) / (m + 1)``. Zero differences are dropped: flipping a zero
    changes nothing, so this is the same p as counting them. All zeros (or no pairs) -> 1.0.

    >>> sign_flip_pvalue([1.0, 2.0, 3.0])   # 2 of the 8 patterns are as extreme: all + and all -
    0.25
    """
    d = _diffs(diffs)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 1.0
    obs = abs(float(d.sum()))
    tol = 1e-9 * float(np.abs(d).sum())
    if n <= EXACT_MAX_N:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) >= obs - tol))
    rng = np.random.default_rng(seed)
    b, left = 0, int(n_resamples)
    while left > 0:
        m = min(left, 4096)
        signs = 1 - 2 * rng.integers(0, 2, size=(m, n), dtype=np.int8)
        b += int((np.abs(signs @ d) >= obs - tol).sum())
        left -= m
    return (b + 1) / (int(n_resamples) + 1)


def paired_t(diffs: Any) -> tuple[float, float, int]:
    """Paired t test of mean difference 0: ``(t, p two-sided, df)``.

    Fewer than 2 pairs: t and p are NaN. Zero variance (all differences equal): the t statistic is undefined;
    this returns ``(0.0, 1.0, df)`` when they are all 0 and ``(±inf, 0.0, df)`` otherwise (every seed moved
    by exactly the same non-zero amount: the data show no noise at all).

    >>> t, p, df = paired_t([1.0, 2.0, 3.0]); round(t, 3), round(p, 4), df
    (3.464, 0.0742, 2)
    """
    d = _diffs(diffs)
    n = len(d)
    if n < 2:
        return float("nan"), float("nan"), max(n - 1, 0)
    mean = float(d.mean())
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return (0.0, 1.0, n - 1) if mean == 0 else (math.copysign(math.inf, mean), 0.0, n - 1)
    t = mean / (float(d.std(ddof=1)) / math.sqrt(n))
    return t, float(2 * special.stdtr(n - 1, -abs(t))), n - 1


def min_attainable_p(n: int, test: str = "t") -> float:
    """The smallest two-sided p the test can give with `n` (non-zero) pairs, whatever the data.

    Sign-flip: ``2 / 2^n`` (all differences of one sign); t: 0 for n ≥ 2. With fewer pairs than a test needs,
    1.0 (it can never reject).

    >>> min_attainable_p(3, "sign-flip"), min_attainable_p(3, "t")
    (0.25, 0.0)
    """
    _check_test(test)
    if test == "sign-flip":
        return min(1.0, 2.0 / 2.0 ** n) if n >= 1 else 1.0
    return 0.0 if n >= 2 else 1.0


def _check_test(test: str) -> None:
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; use one of {TESTS}")


# ----------------------------------------------------------------------------------------------
# multiplicity


def _pvalues(pvalues: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pvalues, dtype=float).ravel()
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    return p, ok


def holm(pvalues: Any) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error rate). NaN stays NaN and does not count in m.

    >>> holm([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p, ok = _pvalues(pvalues)
    out = np.full(p.shape, np.nan)
    q = p[ok]
    m = len(q)
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    vals = np.empty(m)
    vals[order] = adj
    out[ok] = vals
    return out


def benjamini_hochberg(pvalues: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate). NaN stays NaN and does not count in m.

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
    [0.02, 0.04, 0.04, 0.02]
    """
    p, ok = _pvalues(pvalues)
    out = np.full(p.shape, np.nan)
    q = p[ok]
    m = len(q)
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, np.minimum.accumulate((m / np.arange(m, 0, -1)) * q[order][::-1])[::-1])
    vals = np.empty(m)
    vals[order] = adj
    out[ok] = vals
    return out


def adjust(pvalues: Any, method: str = "holm") -> np.ndarray:
    """Adjusted p-values: ``"holm"`` (FWER), ``"bh"`` (FDR) or ``"none"``.

    >>> adjust([0.01, 0.02], "none").tolist()
    [0.01, 0.02]
    """
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    if method == "none":
        return _pvalues(pvalues)[0].copy()
    raise ValueError(f"unknown correction {method!r}; use 'holm', 'bh' or 'none'")


# ----------------------------------------------------------------------------------------------
# effect sizes and power


def mean_ci(diffs: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of the differences and its t-distribution confidence interval ``(mean, low, high)``.

    Fewer than 2 pairs: the bounds are NaN.

    >>> [round(v, 3) for v in mean_ci([1.0, 2.0, 3.0])]
    [2.0, -0.484, 4.484]
    """
    d = _diffs(diffs)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(special.stdtrit(len(d) - 1, 0.5 + confidence / 2)) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def cohens_dz(diffs: Any) -> float:
    """Cohen's d_z: mean / sd of the paired differences (NaN when sd = 0 or fewer than 2 pairs).

    >>> cohens_dz([1.0, 2.0, 3.0])
    2.0
    """
    d = _diffs(diffs)
    if len(d) < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    return float(d.mean()) / sd if sd > 0 else float("nan")


def _t_power(dz: float, n: int, level: float) -> float:
    df, nc = n - 1, dz * math.sqrt(n)
    crit = float(special.stdtrit(df, 1 - level / 2))
    upper, lower = _st.nct.sf(crit, df, nc), _st.nct.cdf(-crit, df, nc)  # scipy's nct can return NaN far out
    return float(np.nan_to_num(upper) + np.nan_to_num(lower))


@functools.lru_cache(maxsize=256)
def detectable_effect(n: int, level: float, power: float = 0.8) -> float:
    """The standardized effect d_z (mean / sd of the differences) a two-sided paired t test at `level` finds
    with probability `power` from `n` pairs: exact, from the noncentral t distribution. NaN for n < 2.

    >>> round(detectable_effect(5, 0.05), 2)
    1.68
    """
    if n < 2:
        return float("nan")
    hi = 1.0
    while _t_power(hi, n, level) < power:
        hi *= 2
        if hi > 1e6:
            return float("inf")
    return float(optimize.brentq(lambda d: _t_power(d, n, level) - power, 0.0, hi, xtol=1e-6))


# ----------------------------------------------------------------------------------------------
# one comparison, many comparisons


@dataclass(frozen=True)
class Comparison:
    """A paired comparison at one setting (differences are treatment − baseline, in the value's units)."""

    setting: str
    n: int
    baseline_mean: float
    treatment_mean: float
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    effect_size: float
    p: float
    p_adjusted: float
    test: str
    significant: bool
    direction: str


def _direction(mean_diff: float, higher_is_better: bool) -> str:
    d = mean_diff if higher_is_better else -mean_diff
    return "gain" if d > 0 else "harm" if d < 0 else "none"


def compare_paired(baseline: Any, treatment: Any, *, setting: str = "", test: str = "t", alpha: float = 0.05,
                   higher_is_better: bool = True, n_resamples: int = 20000, seed: int = 0) -> Comparison:
    """Paired test of treatment vs baseline at one setting (pair i of both arrays = same seed).

    ``p_adjusted`` is ``p`` (one test); ``direction`` is ``gain``/``harm``/``none`` from the sign of the mean
    difference, a gain being higher values (lower if ``higher_is_better=False``, e.g. an accuracy drop).
    With fewer than 2 pairs p is NaN and the result is not significant.

    >>> compare_paired([0.80, 0.82, 0.81], [0.85, 0.86, 0.86]).direction
    'gain'
    """
    _check_test(test)
    b, t = _diffs(baseline), _diffs(treatment)
    if len(b) != len(t):
        raise ValueError(f"baseline and treatment must be paired: {len(b)} vs {len(t)} values")
    d = t - b
    n = len(d)
    if n < 2:
        p = float("nan")
    else:
        p = paired_t(d)[1] if test == "t" else sign_flip_pvalue(d, n_resamples=n_resamples, seed=seed)
    mean, low, high = mean_ci(d, 1 - alpha)
    return Comparison(setting=str(setting), n=n, baseline_mean=float(b.mean()) if n else float("nan"),
                      treatment_mean=float(t.mean()) if n else float("nan"), mean_diff=mean,
                      sd_diff=float(d.std(ddof=1)) if n > 1 else float("nan"), ci_low=low, ci_high=high,
                      effect_size=cohens_dz(d), p=p, p_adjusted=p, test=test, significant=bool(p < alpha),
                      direction=_direction(mean, higher_is_better))


def compare_arms(df: Any, baseline: str, treatment: str, *, value: str = "accuracy", by: str | None = "setting",
                 pair: str = "seed", arm: str = "arm", test: str = "t", correction: str = "holm",
                 alpha: float = 0.05, higher_is_better: bool = True, n_resamples: int = 20000,
                 seed: int = 0) -> Any:
    """One paired test per `by` group (a setting) of two arms, corrected across the groups of this claim.

    Rows of the two arms are paired by `pair` (seed) within each group; only pairs present in both arms count.
    A group with fewer than 2 pairs gets p = NaN (not counted in the correction); an error if every group has.
    ``significant`` = ``p_adjusted < alpha``. Returns a DataFrame of :class:`Comparison` rows, groups in order
    of first appearance; ``attrs`` keeps the arguments (baseline, treatment, value, test, correction, alpha, …).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "setting": "s",
    ...                    "accuracy": [0.80, 0.82, 0.81, 0.85, 0.86, 0.86]})
    >>> compare_arms(df, "a", "b")[["setting", "n", "direction", "significant"]].values.tolist()
    [['s', 3, 'gain', True]]
    """
    import pandas as pd

    _check_test(test)
    adjust([], correction)  # validates the name
    missing = [c for c in (arm, value, pair, by) if c is not None and c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the table; have {list(df.columns)}")
    if baseline == treatment:
        raise ValueError(f"baseline and treatment are the same arm {baseline!r}")
    present = set(df[arm])
    for role, name in (("baseline", baseline), ("treatment", treatment)):
        if name not in present:
            raise ValueError(f"{role} arm {name!r} not in column {arm!r}; have {sorted(map(str, present))}")
    sub = df[df[arm].isin([baseline, treatment])]
    keys = pd.DataFrame({"g": sub[by] if by is not None else "all", "p": sub[pair], "a": sub[arm],
                         "v": pd.to_numeric(sub[value], errors="coerce")})
    bad = keys[keys["v"].isna() | ~np.isfinite(keys["v"].to_numpy(float, na_value=np.nan))]
    if len(bad):
        r = bad.iloc[0]
        raise ValueError(f"{value!r} is NaN or not a finite number for arm {r['a']!r}, {pair} {r['p']!r}"
                         + (f", {by} {r['g']!r}" if by is not None else "") + f" ({len(bad)} such row(s))")
    dup = keys.duplicated(["g", "p", "a"])
    if dup.any():
        r = keys[dup].iloc[0]
        raise ValueError(f"several rows for arm {r['a']!r}, {pair} {r['p']!r}"
                         + (f", {by} {r['g']!r}" if by is not None else "") + f": cannot pair them by {pair!r}")
    wide = keys.pivot(index=["g", "p"], columns="a", values="v").dropna()
    group_of = np.asarray(wide.index.get_level_values("g"), dtype=object)
    bv, tv = wide[baseline].to_numpy(float), wide[treatment].to_numpy(float)
    comps = []
    for g in dict.fromkeys(keys["g"]):
        m = group_of == g
        comps.append(compare_paired(bv[m], tv[m], setting=str(g), test=test, alpha=alpha,
                                    higher_is_better=higher_is_better, n_resamples=n_resamples, seed=seed))
    if all(c.n < 2 for c in comps):
        raise ValueError(f"fewer than 2 {pair} pairs shared by {baseline!r} and {treatment!r} in every group: "
                         f"{ {c.setting: c.n for c in comps} }; a paired test needs at least 2")
    p_adj = adjust([c.p for c in comps], correction)
    comps = [replace(c, p_adjusted=float(q), significant=bool(q < alpha)) for c, q in zip(comps, p_adj)]
    out = pd.DataFrame([asdict(c) for c in comps], columns=list(Comparison.__dataclass_fields__))
    out.attrs.update(baseline=baseline, treatment=treatment, value=value, by=by, pair=pair, test=test,
                     correction=correction, alpha=alpha, higher_is_better=higher_is_better)
    return out


# ----------------------------------------------------------------------------------------------
# the verdict


@dataclass
class Verdict:
    """The outcome of a claim check: ``status`` (one of ``STATUSES``), the settings with a significant gain
    and with a significant harm (after correction), and ``text``, plain sentences built from the numbers."""

    status: str
    gains: list[str] = field(default_factory=list)
    harms: list[str] = field(default_factory=list)
    text: str = ""

    def __str__(self) -> str:
        return self.text


_VERBS = {"supports": "SUPPORT the claim", "partly supports": "PARTLY SUPPORT the claim",
          "contradicts": "CONTRADICT the claim", "mixed": "are MIXED on the claim",
          "inconclusive": "are INCONCLUSIVE on the claim"}
_CORRECTION_NAMES = {"holm": "Holm correction", "bh": "Benjamini-Hochberg correction", "none": "no correction"}


def claim_verdict(table: Any, claim: str = "the treatment beats the baseline", alpha: float | None = None,
                  scale: float = 1.0, unit: str = "") -> Verdict:
    """Verdict on a claim from a :func:`compare_arms` table (the claim: the treatment is better).

    supports: every setting a significant gain; partly supports: ≥ 1 significant gain, no significant harm;
    contradicts: ≥ 1 significant harm, no gain; mixed: both; inconclusive: none significant. `alpha` defaults
    to the table's. Numbers in the text are multiplied by `scale` and followed by `unit` (``100, " pp"``).

    The power sentence: when even the smallest p the test can give (:func:`min_attainable_p`) is not below
    α / (number of tested settings), the design cannot reach significance and the text says how many pairs
    it would need. Otherwise it gives the effect found with ~80% power at α / k (Holm's first step; exact
    for Bonferroni, a little conservative for Holm) for the median sd of the differences, from the
    noncentral t distribution (for the sign-flip test, an approximation).
    """
    a = table.attrs
    alpha = float(a.get("alpha", 0.05) if alpha is None else alpha)
    sig = table["p_adjusted"].to_numpy(float) < alpha
    gains = [s for s, ok, d in zip(table["setting"], sig, table["direction"]) if ok and d == "gain"]
    harms = [s for s, ok, d in zip(table["setting"], sig, table["direction"]) if ok and d == "harm"]
    if gains and len(gains) == len(table):
        status = "supports"
    elif gains:
        status = "mixed" if harms else "partly supports"
    else:
        status = "contradicts" if harms else "inconclusive"
    tested = table[table["p"].notna()]
    k, test, corr = len(tested), a.get("test", str(table["test"].iloc[0])), a.get("correction", "holm")
    ns = sorted(set(tested["n"].astype(int)))
    n_txt = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    fmt = lambda v: f"{scale * v:+.2g}{unit}" if abs(scale * v) < 1 else f"{scale * v:+.1f}{unit}"
    pct = round(100 * (1 - alpha))
    better = "higher" if a.get("higher_is_better", True) else "lower"
    lines = [f"Claim: {claim}.",
             f"Tested: {a.get('treatment', 'treatment')} vs {a.get('baseline', 'baseline')} on "
             f"{a.get('value', 'the value')} ({better} is better) at {k} setting(s), {n_txt} paired "
             f"{a.get('pair', 'seed')}s each; {'paired t test' if test == 't' else 'sign-flip permutation test'}, "
             f"{_CORRECTION_NAMES.get(corr, corr)} across the {k} settings, α = {alpha:g}."]

    def listing(names: list[str]) -> str:
        rows = table.set_index("setting").loc[names]
        return "; ".join(f"{s} {fmt(r.mean_diff)} ({pct}% CI {fmt(r.ci_low)} to {fmt(r.ci_high)}, "
                         f"p_adj {r.p_adjusted:.2g})" for s, r in rows.iterrows())

    lines.append(f"Verdict: the measurements {_VERBS[status]}.")
    lines.append(f"Significant gains at {len(gains)} of {len(table)} settings" + (f": {listing(gains)}." if gains
                                                                                    else "."))
    lines.append(f"Significant harms at {len(harms)} of {len(table)} settings" + (f": {listing(harms)}." if harms
                                                                                    else "."))
    lines.append(_power_sentence(tested, test, alpha, corr, k, scale, unit))
    return Verdict(status=status, gains=gains, harms=harms, text="\n".join(lines))


def _power_sentence(tested: Any, test: str, alpha: float, correction: str, k: int, scale: float,
                    unit: str) -> str:
    if k == 0:
        return "Power: no setting had 2 pairs: nothing could be tested."
    level = alpha / k if correction != "none" else alpha
    n = int(tested["n"].min())
    if min_attainable_p(n, test) >= level:
        need = next(m for m in range(2, 10_000) if min_attainable_p(m, test) < level)
        return (f"Power: this design cannot reach significance at all: with {n} pairs the smallest p the test can "
                f"give is {min_attainable_p(n, test):.3g}, not below the corrected level α/{k} = {level:.2g}; "
                f"it needs at least {need} pairs per setting (more to have power against a real effect).")
    sd = float(np.nanmedian(tested["sd_diff"].to_numpy(float)))
    dz = detectable_effect(n, level)
    if not math.isfinite(sd) or sd == 0:
        return (f"Power: the differences show no spread (median sd {sd:g}), so no power statement can be made; "
                f"any consistent non-zero difference is flagged.")
    eff = dz * sd * scale
    return (f"Power: with {n} pairs and the median sd of the differences ({sd * scale:.2g}{unit}), an effect of "
            f"about ±{eff:.2g}{unit} (d_z = {dz:.2g}) is found with ~80% power at the corrected level "
            f"α/{k} = {level:.2g} (noncentral t{'' if test == 't' else ', approximate for the sign-flip test'}); "
            f"smaller true effects will mostly be reported as inconclusive.")


# ----------------------------------------------------------------------------------------------
# rank correlation


def rankdata(values: Any) -> np.ndarray:
    """Ranks 1..n of `values`, ties getting the mean of their ranks.

    >>> rankdata([10, 20, 20, 5]).tolist()
    [2.0, 3.5, 3.5, 1.0]
    """
    v = np.asarray(values, dtype=float).ravel()
    order = np.argsort(v, kind="stable")
    sv = v[order]
    new = np.r_[True, sv[1:] != sv[:-1]] if len(v) else np.empty(0, bool)
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(v)] - 1
    ranks = np.empty(len(v))
    ranks[order] = ((starts + ends) / 2.0 + 1.0)[np.cumsum(new) - 1]
    return ranks


def _centered_ranks(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length: {len(x)} vs {len(y)}")
    ok = np.isfinite(x) & np.isfinite(y)
    rx, ry = rankdata(x[ok]), rankdata(y[ok])
    return rx - rx.mean() if len(rx) else rx, ry - ry.mean() if len(ry) else ry


def spearman(x: Any, y: Any) -> float:
    """Spearman ρ of the finite pairs of `x` and `y` (ties averaged); NaN with < 3 pairs or a constant side.

    >>> spearman([1, 2, 3, 4], [10, 30, 20, 40])
    0.8
    """
    rx, ry = _centered_ranks(x, y)
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum())) if len(rx) >= 3 else 0.0
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def spearman_test(x: Sequence[float] | Any, y: Sequence[float] | Any, n_permutations: int = 10000,
                  seed: int = 0) -> tuple[float, float, int]:
    """Spearman ρ of the finite pairs, a two-sided permutation p-value and the number of pairs.

    The p-value is ``(b + 1) / (m + 1)`` over `n_permutations` random permutations of y from a local
    ``default_rng(seed)``; NaN when ρ is.

    >>> rho, p, n = spearman_test([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]); round(rho, 3), n
    (0.829, 6)
    """
    rx, ry = _centered_ranks(x, y)
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return rho, float("nan"), len(rx)
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    rng = np.random.default_rng(seed)
    b = 0
    for start in range(0, n_permutations, 2048):
        m = min(2048, n_permutations - start)
        perms = np.argsort(rng.random((m, len(ry))), axis=1)
        b += int((np.abs((ry[perms] * rx).sum(axis=1) / den) >= abs(rho) - 1e-12).sum())
    return rho, (b + 1) / (n_permutations + 1), len(rx)
