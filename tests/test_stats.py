"""craftlab.analysis.stats against independent computations, and the claim check on simulated data.

The simulations are the point: with no true effect the claim check must say "supports"/"partly supports"
in at most 5% of replications (it said so in 8–15% of settings before), and a planted effect must be found.
"""

import doctest
import itertools
import math
import random
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from craftlab.analysis import stats
from craftlab.analysis.stats import (
    adjust,
    benjamini_hochberg,
    claim_verdict,
    cohens_dz,
    compare_arms,
    compare_paired,
    detectable_effect,
    holm,
    mean_ci,
    min_attainable_p,
    paired_t,
    rankdata,
    sign_flip_pvalue,
    spearman,
    spearman_test,
)


def test_doctests():
    assert doctest.testmod(stats).failed == 0


# ----------------------------------------------------------------------------------------------
# sign-flip


def brute_sign_flip(d):
    """Every sign pattern, zeros included, written out independently of the module."""
    d = list(map(float, d))
    obs = abs(sum(d))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        total += 1
        hits += abs(sum(s * x for s, x in zip(signs, d))) >= obs - 1e-12
    return hits / total


@pytest.mark.parametrize("d", [[0.5, -0.2, 0.0, 1.1, 0.3, 0.3, -0.4], [1, 2, 3], [0.01, 0.02, -0.03, 0.0, 0.0],
                               [2, -1, 1, 1, 3, 0.5, 0.25, -0.75]])
def test_sign_flip_equals_brute_force(d):
    assert sign_flip_pvalue(d) == pytest.approx(brute_sign_flip(d), abs=1e-12)


def test_sign_flip_equals_scipy_permutation_test():
    rng = np.random.default_rng(3)
    for n in (4, 6, 9, 12):
        x = rng.normal(0.8, 0.05, n)
        y = x + rng.normal(0.01, 0.02, n)
        ref = st.permutation_test((y, x), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                  permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
        assert sign_flip_pvalue(y - x) == pytest.approx(ref.pvalue, abs=1e-12)


def test_sign_flip_monte_carlo_close_to_exact():
    d = np.random.default_rng(7).normal(0.3, 1.0, 20)
    obs, hits = abs(d.sum()), 0
    bits = np.arange(20)
    for start in range(0, 2 ** 20, 2 ** 16):  # exact: all 2^20 patterns, in chunks
        signs = 1 - 2 * ((np.arange(start, start + 2 ** 16)[:, None] >> bits) & 1)
        hits += int((np.abs(signs @ d) >= obs - 1e-12).sum())
    exact = hits / 2 ** 20
    m = 20000
    p = sign_flip_pvalue(d, n_resamples=m, seed=1)
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / m) + 1 / m
    assert sign_flip_pvalue(d, n_resamples=m, seed=1) == p  # seeded
    assert sign_flip_pvalue(np.linspace(1, 2, 20), n_resamples=999) == 1 / 1000  # (b + 1) / (m + 1), never 0


def test_sign_flip_zeros_and_degenerate():
    assert sign_flip_pvalue([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_pvalue([]) == 1.0
    assert sign_flip_pvalue([1.0, 0.0, 0.0]) == 1.0  # one non-zero difference: both signs equally extreme
    with pytest.raises(ValueError, match="NaN"):
        sign_flip_pvalue([1.0, float("nan")])


def test_min_attainable_p_is_attained():
    for n in range(1, 11):
        assert sign_flip_pvalue(np.arange(1, n + 1)) == pytest.approx(min_attainable_p(n, "sign-flip"))
    assert min_attainable_p(3, "sign-flip") == 0.25 and min_attainable_p(5, "sign-flip") == 0.0625
    assert min_attainable_p(2, "t") == 0.0 and min_attainable_p(1, "t") == 1.0
    with pytest.raises(ValueError, match="unknown test"):
        min_attainable_p(3, "wilcoxon")


# ----------------------------------------------------------------------------------------------
# t, CI, effect size


def test_paired_t_equals_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        b = rng.normal(0.8, 0.05, n)
        t = b + rng.normal(0.01, 0.02, n)
        ref = st.ttest_rel(t, b)
        tt, p, df = paired_t(t - b)
        assert tt == pytest.approx(ref.statistic, rel=1e-10)
        assert p == pytest.approx(ref.pvalue, rel=1e-10)
        assert df == n - 1


def test_paired_t_degenerate():
    assert paired_t([0.0, 0.0, 0.0]) == (0.0, 1.0, 2)
    assert paired_t([0.01, 0.01, 0.01]) == (math.inf, 0.0, 2)
    assert paired_t([-0.5, -0.5]) == (-math.inf, 0.0, 1)
    t, p, _ = paired_t([0.3])
    assert math.isnan(t) and math.isnan(p)


def test_mean_ci_and_dz_by_hand():
    d = np.array([0.02, -0.01, 0.035, 0.01, 0.004])
    mean, sd, n = d.mean(), d.std(ddof=1), len(d)
    for conf in (0.95, 0.9):
        half = st.t.ppf(1 - (1 - conf) / 2, n - 1) * sd / math.sqrt(n)
        assert mean_ci(d, conf) == pytest.approx((mean, mean - half, mean + half), rel=1e-10)
    assert cohens_dz(d) == pytest.approx(mean / sd)
    assert math.isnan(cohens_dz([0.1, 0.1])) and math.isnan(cohens_dz([0.1]))
    m, lo, hi = mean_ci([0.1])
    assert m == 0.1 and math.isnan(lo) and math.isnan(hi)


def test_detectable_effect_has_the_power_it_claims():
    for n, level in ((5, 0.05), (5, 0.05 / 13), (10, 0.01)):
        dz = detectable_effect(n, level)
        crit = st.t.ppf(1 - level / 2, n - 1)
        power = st.nct.sf(crit, n - 1, dz * math.sqrt(n))  # the lower tail is negligible here
        assert power == pytest.approx(0.8, abs=1e-4)
    assert math.isnan(detectable_effect(1, 0.05))


# ----------------------------------------------------------------------------------------------
# multiplicity


def holm_loop(p):
    p = np.asarray(p, float)
    m, order, out, running = len(p), np.argsort(p), np.empty(len(p)), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def bh_loop(p):
    p = np.asarray(p, float)
    m = len(p)
    return np.array([min(1.0, min(m * p[j] / (np.sum(p <= p[j])) for j in range(m) if p[j] >= p[i]))
                     for i in range(m)])


def test_holm_and_bh_hand_examples():
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH by hand: sorted 0.005, 0.01, 0.03, 0.04 -> 4/1·0.005, 4/2·0.01, 4/3·0.03, 4/4·0.04 = .02 .02 .04 .04
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.01, 0.02, 0.03, 0.5]) == pytest.approx([0.04, 0.04, 0.04, 0.5])
    assert holm([0.3, 0.5, 0.02]) == pytest.approx([0.6, 0.6, 0.06])  # monotone: 0.5·1 is raised to 0.6
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped
    assert adjust(p, "none") == pytest.approx(p)


def test_corrections_nan_safe():
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)  # m = 2
    out = benjamini_hochberg([float("nan"), 0.01, 0.04])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.02, 0.04])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])
    with pytest.raises(ValueError, match="unknown correction"):
        adjust([0.5], "bonferroni-ish")


def test_corrections_equal_loops_on_random_pvalues():
    rng = np.random.default_rng(11)
    for _ in range(50):
        p = rng.uniform(0, 0.2, rng.integers(1, 15))
        p[rng.random(len(p)) < 0.2] = p[0]  # ties
        assert holm(p) == pytest.approx(holm_loop(p), abs=1e-12)
        assert adjust(p, "bh") == pytest.approx(bh_loop(p), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# compare_arms / claim_verdict on hand-made tables


def table(values, arms=("AdamW", "SAM"), value="accuracy"):
    """values: {setting: (baseline values, treatment values)}, paired by position = seed."""
    rows = [{"arm": arm, "seed": i, "setting": s, value: v}
            for s, pair in values.items() for arm, vs in zip(arms, pair) for i, v in enumerate(vs)]
    return pd.DataFrame(rows)


BASE = [0.80, 0.82, 0.81, 0.79, 0.83]


def test_compare_arms_equals_independent_computation():
    vals = {"a": (BASE, [0.86, 0.87, 0.85, 0.84, 0.88]), "b": (BASE, [0.81, 0.82, 0.80, 0.81, 0.83]),
            "c": (BASE, [0.78, 0.79, 0.79, 0.77, 0.80])}
    df = table(vals).sample(frac=1.0, random_state=0)  # row order must not matter
    out = compare_arms(df, "AdamW", "SAM")
    assert list(out["setting"]) == list(dict.fromkeys(df["setting"]))
    out = out.set_index("setting").loc[["a", "b", "c"]]
    ps = [st.ttest_rel(t, b).pvalue for b, t in vals.values()]
    assert out["p"].to_numpy() == pytest.approx(ps, rel=1e-10)
    assert out["p_adjusted"].to_numpy() == pytest.approx(holm_loop(ps), rel=1e-10)
    assert out["mean_diff"].to_numpy() == pytest.approx([np.mean(np.subtract(t, b)) for b, t in vals.values()])
    assert list(out["direction"]) == ["gain", "gain", "harm"]
    assert list(out["significant"]) == list(out["p_adjusted"] < 0.05)
    assert out.attrs["correction"] == "holm" and out.attrs["treatment"] == "SAM"


def test_gain_and_harm_both_ways():
    gain, harm = [b + 0.05 + 0.001 * i for i, b in enumerate(BASE)], [b - 0.05 + 0.001 * i for i, b in enumerate(BASE)]
    df = table({"p50": (BASE, gain), "p70": (BASE, gain)})
    v = claim_verdict(compare_arms(df, "AdamW", "SAM"))
    assert (v.status, v.gains, v.harms) == ("supports", ["p50", "p70"], [])
    v = claim_verdict(compare_arms(df, "SAM", "AdamW"))  # the other way round: the same effect is a harm
    assert (v.status, v.gains, v.harms) == ("contradicts", [], ["p50", "p70"])
    df = table({"p50": (BASE, gain), "p70": (BASE, harm)})
    v = claim_verdict(compare_arms(df, "AdamW", "SAM"))
    assert (v.status, v.gains, v.harms) == ("mixed", ["p50"], ["p70"])
    df = table({"p50": (BASE, gain), "p70": (BASE, [b + 0.001 * (-1) ** i for i, b in enumerate(BASE)])})
    assert claim_verdict(compare_arms(df, "AdamW", "SAM")).status == "partly supports"
    assert "p50 +5.2 pp" in claim_verdict(compare_arms(df, "AdamW", "SAM"), scale=100, unit=" pp").text


def test_lower_is_better_flips_direction():
    drop_b = [0.10, 0.12, 0.11, 0.09, 0.13]
    drop_t = [d - 0.04 + 0.002 * i for i, d in enumerate(drop_b)]  # the treatment loses less accuracy
    df = table({"W4A4": (drop_b, drop_t)}, value="accuracy_drop")
    out = compare_arms(df, "AdamW", "SAM", value="accuracy_drop", higher_is_better=False)
    assert out["mean_diff"].iloc[0] < 0 and out["direction"].iloc[0] == "gain"
    assert claim_verdict(out).status == "supports"
    out = compare_arms(df, "AdamW", "SAM", value="accuracy_drop")  # higher_is_better=True: a harm
    assert out["direction"].iloc[0] == "harm" and claim_verdict(out).status == "contradicts"


def test_compare_paired_single_setting():
    c = compare_paired(BASE, [b - 0.03 for b in BASE], setting="x", higher_is_better=False)
    assert c.direction == "gain" and c.n == 5 and c.p == c.p_adjusted
    assert compare_paired([0.8], [0.9]).significant is False
    with pytest.raises(ValueError, match="paired"):
        compare_paired([0.8, 0.9], [0.9])


def test_errors_name_the_problem():
    df = table({"a": (BASE, BASE), "b": (BASE, BASE)})
    with pytest.raises(ValueError, match="treatment arm 'ASAM'"):
        compare_arms(df, "AdamW", "ASAM")
    with pytest.raises(ValueError, match="baseline arm 'SGD'"):
        compare_arms(df, "SGD", "SAM")
    with pytest.raises(ValueError, match="accuracy_drop"):
        compare_arms(df, "AdamW", "SAM", value="accuracy_drop")
    one_pair = df[(df["arm"] == "AdamW") | (df["seed"] == 0)]  # SAM has only seed 0
    with pytest.raises(ValueError, match="fewer than 2 seed pairs"):
        compare_arms(one_pair, "AdamW", "SAM")
    nan = df.copy()
    nan.loc[3, "accuracy"] = float("nan")
    with pytest.raises(ValueError, match=r"NaN .* arm 'AdamW', seed 3, setting 'a'"):
        compare_arms(nan, "AdamW", "SAM")
    with pytest.raises(ValueError, match="several rows"):
        compare_arms(pd.concat([df, df.iloc[:1]]), "AdamW", "SAM")
    with pytest.raises(ValueError, match="unknown test"):
        compare_arms(df, "AdamW", "SAM", test="z")


def test_group_with_too_few_pairs_is_not_counted():
    vals = {"a": (BASE, [0.86, 0.87, 0.85, 0.84, 0.88]), "b": (BASE, [0.81, 0.82, 0.80, 0.81, 0.83]),
            "c": (BASE, [0.9, 0.9, 0.9, 0.9, 0.9])}
    df = table(vals)
    df = df[~((df["setting"] == "c") & (df["arm"] == "SAM") & (df["seed"] > 0))]  # c: one pair only
    out = compare_arms(df, "AdamW", "SAM").set_index("setting")
    assert out.loc["c", "n"] == 1 and math.isnan(out.loc["c", "p"]) and not out.loc["c", "significant"]
    ps = [st.ttest_rel(t, b).pvalue for b, t in list(vals.values())[:2]]
    assert out.loc[["a", "b"], "p_adjusted"].to_numpy() == pytest.approx(holm_loop(ps))  # m = 2, not 3
    assert claim_verdict(out.reset_index()).status != "supports"


def test_power_statement():
    rng = np.random.default_rng(0)
    vals = {f"s{i}": (BASE, list(np.add(BASE, rng.normal(0, 0.01, 5)))) for i in range(13)}
    df = table(vals)
    v = claim_verdict(compare_arms(df, "AdamW", "SAM", test="sign-flip"))
    assert "cannot reach significance at all" in v.text and "at least 10 pairs" in v.text  # 2/2^10 < .05/13
    out = compare_arms(df, "AdamW", "SAM")
    mde = detectable_effect(5, 0.05 / 13) * out["sd_diff"].median() * 100
    assert f"±{mde:.2g} pp" in claim_verdict(out, scale=100, unit=" pp").text
    three = df[df["seed"] < 3]
    assert "cannot reach" not in claim_verdict(compare_arms(three, "AdamW", "SAM")).text


# ----------------------------------------------------------------------------------------------
# simulations: the claim check's error rates


def simulate(rng, n_seeds, effects, noise):
    """One claim check's data: 13 settings × n_seeds × 2 arms of accuracies (fractions).

    A seed shares an offset across arms (and partly across settings), so the pairing by seed matters;
    `noise` is the per-run noise sd; `effects` the true treatment effect per setting."""
    k = len(effects)
    level = 0.9 - 0.02 * np.arange(k)
    shared = rng.normal(0, 0.03, (n_seeds, 1)) + rng.normal(0, 0.02, (n_seeds, k))
    base = level + shared + rng.normal(0, noise, (n_seeds, k))
    treat = level + shared + effects + rng.normal(0, noise, (n_seeds, k))
    return pd.DataFrame({"arm": np.repeat(["AdamW", "SAM"], n_seeds * k),
                         "seed": np.tile(np.repeat(np.arange(n_seeds), k), 2),
                         "setting": np.tile([f"s{i}" for i in range(k)], 2 * n_seeds),
                         "accuracy": np.concatenate([base.ravel(), treat.ravel()])})


def error_rates(n_seeds, effects, noise, reps, seed, **kw):
    rng = np.random.default_rng(seed)
    statuses, sig_gain, sig_any = [], [], []
    for _ in range(reps):
        out = compare_arms(simulate(rng, n_seeds, effects, noise), "AdamW", "SAM", **kw)
        statuses.append(claim_verdict(out).status)
        sig_gain.append((out["significant"] & (out["direction"] == "gain")).to_numpy())
        sig_any.append(out["significant"].to_numpy())
    return np.array(statuses), np.array(sig_gain), np.array(sig_any)


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_null_claim_check_is_conservative(n_seeds):
    effects = np.zeros(13)
    statuses, gain, _ = error_rates(n_seeds, effects, 0.02, reps=200, seed=n_seeds)
    assert np.isin(statuses, ["supports", "partly supports"]).mean() <= 0.05
    assert gain.mean(axis=0).max() <= 0.05  # per setting
    # the simulation has teeth: without the correction the same data "support" the claim far too often
    statuses, _, _ = error_rates(n_seeds, effects, 0.02, reps=100, seed=n_seeds, correction="none")
    assert np.isin(statuses, ["supports", "partly supports"]).mean() > 0.10


def test_planted_effect_is_found():
    effects = np.zeros(13)
    effects[[1, 6, 11]] = 0.03  # +3 pts; per-run noise 0.5 pt -> sd of the differences 0.7 pt, d_z ≈ 4.2
    statuses, gain, sig = error_rates(5, effects, 0.005, reps=200, seed=1)
    assert (gain[:, [1, 6, 11]].mean(axis=0) >= 0.8).all()
    null = np.flatnonzero(effects == 0)
    # family-wise error over the 10 true nulls: Holm keeps it ≤ 5% (0.044 measured over 2000 replications);
    # 200 replications estimate it within ~1.5 pts, hence 3 binomial standard errors of slack
    assert sig[:, null].any(axis=1).mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
    assert gain[:, null].mean() <= 0.05
    assert np.isin(statuses, ["partly supports"]).mean() >= 0.8


def test_power_statement_is_calibrated():
    """A true effect of exactly the size the power sentence names is found ~80% of the time."""
    noise = 0.01
    effects = np.zeros(13)
    effects[4] = detectable_effect(5, 0.05 / 13) * noise * math.sqrt(2)  # sd of a difference = noise·√2
    _, gain, _ = error_rates(5, effects, noise, reps=200, seed=2)  # 0.82 over 2000
    assert 0.7 <= gain[:, 4].mean() <= 0.92


# ----------------------------------------------------------------------------------------------
# rank correlation, and the caller's random state


def test_rankdata_and_spearman_equal_scipy():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 5, 30).astype(float)
    y = x + rng.integers(0, 4, 30)
    assert rankdata(x) == pytest.approx(st.rankdata(x))
    x[3], y[7] = np.nan, np.inf
    ok = np.isfinite(x) & np.isfinite(y)
    assert spearman(x, y) == pytest.approx(st.spearmanr(x[ok], y[ok]).statistic)
    assert math.isnan(spearman([1, 2], [3, 4])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert spearman_test(x, y)[2] == ok.sum()


def test_spearman_test_close_to_exact_permutation():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0])
    rho = spearman(x, y)
    exact = np.mean([abs(spearman(x, np.array(p))) >= abs(rho) - 1e-12 for p in itertools.permutations(y)])
    r, p, n = spearman_test(x, y, n_permutations=20000, seed=3)
    assert r == pytest.approx(rho) and n == 7
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-4
    assert spearman_test(x, y, n_permutations=20000, seed=3) == (r, p, n)


def test_global_random_state_untouched():
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    spearman_test(np.arange(10.0), np.arange(10.0)[::-1] ** 2)
    sign_flip_pvalue(np.linspace(-1, 2, 25), n_resamples=5000, seed=9)  # Monte Carlo branch
    compare_arms(table({"a": (BASE, BASE[::-1])}), "AdamW", "SAM", test="sign-flip")
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state


# ----------------------------------------------------------------------------------------------
# the experiments module's claim check goes through this module


def test_experiments_claim_check_uses_stats():
    import inspect

    ex = pytest.importorskip("craftlab.studies.experiments")
    rng = np.random.default_rng(0)
    settings, drops, effects = ["magnitude 50%", "wanda 70%", "W8A8", "W4A4"], [0.02, 0.08, 0.0, 0.15], [0, .03, 0, .05]
    rows = []
    for arm, on in (("AdamW", 0.0), ("SAM", 1.0)):
        for seed in range(5):
            fp = 0.95 + rng.normal(0, 0.005)
            for s, drop, e in zip(["FP32", *settings], [0.0, *drops], [0.0, *effects]):
                d = max(0.0, drop - on * e + rng.normal(0, 0.004)) if drop else 0.0
                rows.append({"arm": arm, "seed": seed, "setting": s, "fp_accuracy": fp, "accuracy": fp - d,
                             "accuracy_drop": d, "n_test": 359})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=1)
    g = ex.paired_gains(df, "AdamW", "SAM", settings=settings)
    assert list(g["setting"]) == settings
    by = {k: part.set_index("seed").sort_index() for k, part in df.groupby(["setting", "arm"])}
    reductions = [by[(s, "AdamW")]["accuracy_drop"] - by[(s, "SAM")]["accuracy_drop"] for s in settings]
    ps = [1.0 if np.ptp(r) == 0 else st.ttest_1samp(r, 0.0).pvalue for r in reductions]  # W8A8: all zeros
    assert g["drop_reduction"].to_numpy() == pytest.approx([r.mean() for r in reductions])
    assert g["p_adjusted"].to_numpy() == pytest.approx(holm_loop(ps), rel=1e-9)
    assert list(g["verdict"]) == ["inconclusive", "supports", "no damage", "supports"]
    v = ex.verdict(g)
    assert (v.status, v.gains, v.harms) == ("partly supports", ["wanda 70%", "W4A4"], [])
    text = ex.claim_report(g, claim="SAM loses less")
    assert text.startswith("Claim: SAM loses less.") and "PARTLY SUPPORT" in text and "Holm" in text
    assert "Power:" in text and not re.search(r"\bnan\b", text, re.IGNORECASE)
    with pytest.raises(ValueError, match="W2A2"):
        ex.paired_gains(df, "AdamW", "SAM", settings=["W2A2"])
    assert inspect.signature(ex.run_arms).parameters["seeds"].default == (0, 1, 2, 3, 4)
    x, y = rng.normal(size=9), rng.normal(size=9)
    assert ex.spearman_test(list(x), y) == spearman_test(x, y) and ex.spearman(x, y) == spearman(x, y)
