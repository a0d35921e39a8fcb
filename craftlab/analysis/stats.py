"""Statistics of the claim checks: paired tests, multiplicity correction, effect sizes, verdicts, rank correlation.

A claim check compares two arms (AdamW vs AdamW+SAM) over the same seeds at several settings: :func:`compare_arms`
runs one paired test per setting and corrects across the settings of that claim (Holm: family-wise error rate);
:func:`claim_verdict` turns that table into a status and sentences with a power statement. numpy and scipy only
(pandas inside the table functions); randomness from local ``default_rng(seed)``, never the caller's RNG.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import optimize, special
from scipy import stats as _st

__all__ = ["Comparison", "Verdict", "adjust", "benjamini_hochberg", "claim_verdict", "cohens_dz", "compare_arms",
           "compare_paired", "detectable_effect", "holm", "mean_ci", "min_attainable_p", "paired_t", "rankdata",
           "sign_flip_pvalue", "spearman", "spearman_test", "zero_spread"]

EXACT_MAX_N = 16
"""The sign-flip test enumerates all 2^n sign patterns up to this many non-zero differences."""

TESTS = ("t", "sign-flip")
STATUSES = ("supports", "partly supports", "contradicts", "mixed", "inconclusive")


def _diffs(diffs: Any) -> np.ndarray:
    d = np.asarray(diffs, dtype=float).ravel()
    if not np.isfinite(d).all():
        raise ValueError(f"the paired differences contain NaN or inf: {d.tolist()}")
    return d


def sign_flip_pvalue(diffs: Any, n_resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided paired sign-flip permutation p-value of the mean difference.

    Under the null each difference is as likely to have either sign. Up to ``EXACT_MAX_N`` non-zero differences
    all 2^n sign patterns are enumerated (exact p); above, `n_resamples` random ones from a local
    ``default_rng(seed)`` give ``(b + 1) / (m + 1)``. Zeros are dropped (flipping them changes nothing, so the p
    is the same as counting them); all zeros or no pairs -> 1.0.

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
    rng, b = np.random.default_rng(seed), 0
    for start in range(0, n_resamples, 4096):
        signs = 1 - 2 * rng.integers(0, 2, size=(min(4096, n_resamples - start), n), dtype=np.int8)
        b += int((np.abs(signs @ d) >= obs - tol).sum())
    return (b + 1) / (n_resamples + 1)


def paired_t(diffs: Any) -> tuple[float, float, int]:
    """Paired t test of mean difference 0: ``(t, p two-sided, df)``.

    Fewer than 2 pairs: t and p are NaN. Zero variance (all differences equal), where t is undefined:
    ``(0.0, 1.0, df)`` if they are all 0, else ``(±inf, 0.0, df)`` (every seed moved by the same amount).

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


def zero_spread(diffs: Any) -> bool:
    """True when every paired difference is the same (up to float rounding): the paired t test is undefined.

    Accuracy moves in steps of one test image, so "every seed moved by exactly one image" is common with few
    seeds; a t test would call that infinitely significant (p = 0). :func:`compare_paired` then uses the exact
    sign-flip p instead (``2 / 2^n``: with 3 seeds 0.25, never significant).

    >>> zero_spread([1 / 359, 1 / 359, 1 / 359]), zero_spread([0.0, 1 / 359])
    (True, False)
    """
    d = _diffs(diffs)
    return len(d) >= 2 and float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max()))


def min_attainable_p(n: int, test: str = "t") -> float:
    """The smallest two-sided p the test can give with `n` (non-zero) pairs, whatever the data.

    Sign-flip: ``2 / 2^n`` (all differences of one sign); t: 0 for n ≥ 2; 1.0 with too few pairs for the test.

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


def _step(pvalues: Any, step: Any) -> np.ndarray:
    """Apply ``step(sorted non-NaN p) -> adjusted`` and put the results back in place; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float).ravel()
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    out, q = np.full(p.shape, np.nan), p[ok]
    order = np.argsort(q, kind="stable")
    vals = np.empty(len(q))
    vals[order] = np.minimum(1.0, step(q[order], len(q))) if len(q) else q
    out[ok] = vals
    return out


def holm(pvalues: Any) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error rate). NaN stays NaN and does not count in m.

    >>> holm([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    return _step(pvalues, lambda q, m: np.maximum.accumulate((m - np.arange(m)) * q))


def benjamini_hochberg(pvalues: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate). NaN stays NaN and does not count in m.

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
    [0.02, 0.04, 0.04, 0.02]
    """
    return _step(pvalues, lambda q, m: np.minimum.accumulate((m / np.arange(m, 0, -1)) * q[::-1])[::-1])


def adjust(pvalues: Any, method: str = "holm") -> np.ndarray:
    """Adjusted p-values: ``"holm"`` (FWER), ``"bh"`` (FDR) or ``"none"``.

    >>> adjust([0.01, 0.02], "none").tolist()
    [0.01, 0.02]
    """
    methods = {"holm": holm, "bh": benjamini_hochberg, "none": lambda p: _step(p, lambda q, m: q)}
    if method not in methods:
        raise ValueError(f"unknown correction {method!r}; use 'holm', 'bh' or 'none'")
    return methods[method](pvalues)


def mean_ci(diffs: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of the differences and its t-distribution confidence interval ``(mean, low, high)`` (NaN bounds < 2 pairs).

    >>> [round(v, 3) for v in mean_ci([1.0, 2.0, 3.0])]
    [2.0, -0.484, 4.484]
    """
    d = _diffs(diffs)
    mean = float(d.mean()) if len(d) else float("nan")
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
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return float(d.mean()) / sd if sd > 0 else float("nan")


def _t_power(dz: float, n: int, level: float) -> float:
    df, nc = n - 1, dz * math.sqrt(n)
    crit = float(special.stdtrit(df, 1 - level / 2))
    upper, lower = _st.nct.sf(crit, df, nc), _st.nct.cdf(-crit, df, nc)  # scipy's nct can return NaN far out
    return float(np.nan_to_num(upper) + np.nan_to_num(lower))


@functools.lru_cache(maxsize=256)
def detectable_effect(n: int, level: float, power: float = 0.8) -> float:
    """The d_z (mean / sd of the differences) a two-sided paired t test at `level` finds with probability `power`
    from `n` pairs, from the noncentral t distribution (exact). NaN for n < 2.

    >>> round(detectable_effect(5, 0.05), 2)
    1.68
    """
    if n < 2:
        return float("nan")
    hi = 1.0
    while _t_power(hi, n, level) < power and hi < 1e6:
        hi *= 2
    return float("inf") if hi >= 1e6 else float(optimize.brentq(lambda d: _t_power(d, n, level) - power, 0, hi))


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

    ``p_adjusted`` is ``p`` (one test); ``direction``: ``gain``/``harm``/``none`` from the sign of the mean difference
    (a gain is higher, or lower with ``higher_is_better=False``, e.g. for an accuracy drop). < 2 pairs: p is NaN.

    >>> compare_paired([0.80, 0.82, 0.81], [0.85, 0.86, 0.86]).direction
    'gain'
    """
    _check_test(test)
    b, t = _diffs(baseline), _diffs(treatment)
    if len(b) != len(t):
        raise ValueError(f"baseline and treatment must be paired: {len(b)} vs {len(t)} values")
    d, n = t - b, len(b)
    if n >= 2 and test == "t" and zero_spread(d):
        test = "sign-flip"  # t is undefined (sd 0): the exact sign-flip p, 2 / 2^n, never 0 (see zero_spread)
    p = float("nan") if n < 2 else paired_t(d)[1] if test == "t" else sign_flip_pvalue(d, n_resamples, seed)
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
    show = lambda v: repr(v.item() if isinstance(v, np.generic) else v)
    where = lambda r: f"arm {show(r['a'])}, {pair} {show(r['p'])}" + (f", {by} {show(r['g'])}" if by else "")
    bad = keys[~np.isfinite(keys["v"].to_numpy(float, na_value=np.nan))]
    if len(bad):
        raise ValueError(f"{value!r} is NaN or not a finite number for {where(bad.iloc[0])} ({len(bad)} row(s))")
    dup = keys[keys.duplicated(["g", "p", "a"])]
    if len(dup):
        raise ValueError(f"several rows for {where(dup.iloc[0])}: cannot pair them by {pair!r}")
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


@dataclass
class Verdict:
    """A claim check's ``status`` (``STATUSES``), settings with a significant gain / harm, and its sentences."""

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

    Power sentence: if the smallest p the test can give (:func:`min_attainable_p`) is not below α/k (k tested
    settings), the design cannot reach significance: the text says so and how many pairs it needs. Otherwise: the
    effect found with ~80% power at α/k (Holm's first step: exact for Bonferroni, slightly conservative for Holm)
    given the median (non-zero) sd of the differences, from the noncentral t (:func:`detectable_effect`; approximate for
    the sign-flip test).
    """
    a = table.attrs
    alpha = float(a.get("alpha", 0.05) if alpha is None else alpha)
    sig = table["p_adjusted"].to_numpy(float) < alpha
    gains = [s for s, ok, d in zip(table["setting"], sig, table["direction"]) if ok and d == "gain"]
    harms = [s for s, ok, d in zip(table["setting"], sig, table["direction"]) if ok and d == "harm"]
    status = (("supports" if len(gains) == len(table) else "mixed" if harms else "partly supports") if gains
              else "contradicts" if harms else "inconclusive")
    tested = table[table["p"].notna()]
    k, test, corr = len(tested), a.get("test", str(table["test"].iloc[0])), a.get("correction", "holm")
    ns = sorted(set(tested["n"].astype(int)))
    n_txt = "no" if not ns else f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    fmt = lambda v: f"{scale * v:+.2g}{unit}" if abs(scale * v) < 1 else f"{scale * v:+.1f}{unit}"
    pct = round(100 * (1 - float(a.get("alpha", 0.05))))  # the CIs were computed at the table's α
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
    for word, names in (("gains", gains), ("harms", harms)):
        listed = f": {listing(names)}" if names else ""
        lines.append(f"Significant {word} at {len(names)} of {len(table)} settings{listed}.")
    lines.append(_power_sentence(tested, test, alpha, corr, k, scale, unit))
    return Verdict(status=status, gains=gains, harms=harms, text="\n".join(lines))


def _power_sentence(tested: Any, test: str, alpha: float, correction: str, k: int, scale: float, unit: str) -> str:
    if k == 0:
        return "Power: no setting had 2 pairs: nothing could be tested."
    level, name = (alpha / k, f"the corrected level α/{k}") if correction != "none" else (alpha, "α")
    n = int(tested["n"].min())
    if min_attainable_p(n, test) >= level:
        need = next(m for m in range(2, 10_000) if min_attainable_p(m, test) < level)
        return (f"Power: this design cannot reach significance at all: with {n} pairs the smallest p the test can "
                f"give is {min_attainable_p(n, test):.3g}, not below {name} = {level:.2g}; "
                f"it needs at least {need} pairs per setting (more to have power against a real effect).")
    sds = tested["sd_diff"].to_numpy(float)
    sds = sds[np.isfinite(sds) & (sds > 0)]  # a setting where every seed gives the same difference says nothing
    if not len(sds):
        return ("Power: the differences show no spread at any setting, so no power statement can be made; "
                "any consistent non-zero difference is flagged.")
    sd, dz = float(np.median(sds)), detectable_effect(n, level)
    approx = "" if test == "t" else ", approximate for the sign-flip test"
    return (f"Power: with {n} pairs and the median sd of the differences ({sd * scale:.2g}{unit}), an effect of "
            f"about ±{dz * sd * scale:.2g}{unit} (d_z = {dz:.2g}) is found with ~80% power at {name} = {level:.2g} "
            f"(noncentral t{approx}); smaller true effects will mostly be reported as inconclusive.")


from .rank import rankdata, spearman, spearman_test  # noqa: E402  (re-exported: one home for rank statistics)
