"""craftlab.studies: each paper's study recipe, its claim checks through craftlab.analysis.stats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _craft_table(shift: float, seeds=(0, 1, 2, 3, 4)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for arch in ("vit-tiny", "resnet-tiny"):
        for seed in seeds:
            for setting in ("FP32", "magnitude 50%", "W4A4"):
                base = 0.8 + 0.01 * rng.standard_normal()
                for arm in ("AdamW", "SAM 0.05"):
                    gain = 0.0 if arm == "AdamW" or setting == "FP32" else shift + 0.002 * (seed - 2)
                    rows.append({"arch": arch, "seed": seed, "setting": setting, "arm": arm, "accuracy": base + gain})
    return pd.DataFrame(rows)


def test_craft_bench_claims_are_paired_by_seed_over_the_compressed_settings():
    from craftlab.studies.craft import bench_claims

    df = _craft_table(0.05)
    table, verdicts = bench_claims(df, "AdamW", ["AdamW", "SAM 0.05"])
    assert set(verdicts) == {("vit-tiny", "SAM 0.05"), ("resnet-tiny", "SAM 0.05")}
    assert set(table["setting"]) == {"magnitude 50%", "W4A4"}  # FP32 is not a compressed setting
    # the mean paired difference by hand: SAM − AdamW at the same (arch, seed, setting)
    wide = df.pivot_table(index=["arch", "seed", "setting"], columns="arm", values="accuracy")
    by_hand = (wide["SAM 0.05"] - wide["AdamW"]).groupby(level=["arch", "setting"]).mean()
    for _, r in table.iterrows():
        assert r["mean_diff"] == pytest.approx(by_hand[(r["arch"], r["setting"])])
    assert all(v.status == "supports" for v in verdicts.values())
    _, none = bench_claims(_craft_table(0.0), "AdamW", ["SAM 0.05"])
    assert all(v.status != "supports" for v in none.values())


def _qwt_table(w4_gain: float, w6_gain: float, v2_shift: float, seeds=(0, 1, 2, 3, 4)) -> pd.DataFrame:
    """A notebook-03-shaped table: PTQ, +QwT (PTQ + the gain), +QwT-v2 (+QwT + v2_shift), small seed noise."""
    rows = []
    for model in ("vit-tiny", "resnet-tiny"):
        for arm in ("AdamW", "SAM ρ=0.05"):
            for seed in seeds:
                rows.append({"model": model, "arm": arm, "seed": seed, "bits": "FP32", "method": "FP",
                             "params_added": 0.0, "accuracy": 0.95})
                for bits, gain in (("W8A8", 0.0), ("W6A6", w6_gain), ("W4A4", w4_gain)):
                    ptq = 0.9 - (0.2 if bits == "W4A4" else 0.0) + 0.01 * ((seed * 7 + len(arm)) % 5) / 5
                    noise = 0.001 * (seed - 2)
                    for method, acc, added in (("PTQ", ptq, 0.0), ("+QwT", ptq + gain + noise, 0.05),
                                               ("+QwT-v2", ptq + gain + noise + v2_shift + 0.0005 * (seed % 2),
                                                0.0)):
                        rows.append({"model": model, "arm": arm, "seed": seed, "bits": bits, "method": method,
                                     "params_added": added, "accuracy": acc})
    return pd.DataFrame(rows)


def test_qwt_claim_rules_read_the_paired_table():
    from craftlab.studies.qwt import interaction_claims, qwt_claims, v2_claims

    claims, text = qwt_claims(_qwt_table(w4_gain=0.1, w6_gain=0.001, v2_shift=0.0))
    assert (claims["verdict"] == "holds").all() and len(claims) == 8  # 2 models × 2 arms × 2 methods
    # by hand: +QwT adds 10 points and zero-mean noise; +QwT-v2 also 0.05 pts at the 2 odd seeds of 5
    expected = claims["method"].map({"+QwT": 10.0, "+QwT-v2": 10.0 + 0.05 * 2 / 5})
    assert claims["W4A4 gain (pts)"].to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-9)
    assert "holds in 8 of 8" in text and "supported" in text and "5 seeds" in text
    # a W6A6 gain of 3 points is not "adds little": the rule says so
    claims, text = qwt_claims(_qwt_table(w4_gain=0.1, w6_gain=0.03, v2_shift=0.0))
    assert (claims["verdict"] == "W6A6 gain not shown < 1 pt").all() and "not supported" in text
    v2, text = v2_claims(_qwt_table(w4_gain=0.1, w6_gain=0.0, v2_shift=0.0))
    assert set(v2["verdict"]) == {"matches"} and "parameters added after the fold: none" in text
    v2, _ = v2_claims(_qwt_table(w4_gain=0.1, w6_gain=0.0, v2_shift=-0.05))
    assert set(v2["verdict"]) == {"worse"}
    inter, text = interaction_claims(_qwt_table(w4_gain=0.1, w6_gain=0.0, v2_shift=0.0))
    assert len(inter) == 12 and (inter["difference"].abs() < 1e-6).all() and "0 of 12 rows" in text


def test_supernet_no_degradation_is_the_ledger_s_non_inferiority_verdict():
    """The "without degradation" check: supports when the 90 % CI of the paired change stays above −1 pp (the
    ledger's margin), contradicts when the change is significantly negative and the CI crosses −1 pp."""
    from scipy import stats as st

    from craftlab.studies.supernet import no_degradation

    fp = np.array([0.95, 0.96, 0.94, 0.955])
    for shift, expected in ((-0.002, "supports"), (-0.03, "contradicts")):
        sub = fp + shift + np.array([0.001, -0.001, 0.0005, -0.0005])
        d = sub - fp
        lo = d.mean() - st.t.ppf(0.95, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))  # by hand: 90 % CI low end
        assert (lo > -0.01) == (expected == "supports")
        v = no_degradation(fp, sub)
        assert v.status == expected and v.kind == "non-inferiority" and v.margin == 0.01
        assert v.ci_low == pytest.approx(lo)
    assert no_degradation([0.9], [0.8]) is None  # one seed: not tested
    with pytest.raises(ValueError, match="paired"):
        no_degradation([0.9, 0.8], [0.8])


def test_adapt_paired_tests_pair_by_seed_and_holm_across_the_pairs():
    from scipy import stats as st

    from craftlab.adapt.methods import ARMS, LAST, LORA
    from craftlab.studies.adapt import PAIRS, paired_tests

    assert {label for pair in PAIRS for label in pair} <= set(ARMS)  # the benchmark's pairs name real arms
    acc = {LORA: [0.80, 0.82, 0.81, 0.79], LAST: [0.83, 0.86, 0.82, 0.80], "full": [0.85, 0.85, 0.84, 0.86]}
    df = pd.DataFrame([{"arm": a, "seed": s, "test_accuracy": v} for a, vs in acc.items() for s, v in enumerate(vs)])
    tests = paired_tests(df, pairs=[(LORA, LAST), ("full", LAST)])
    d1, d2 = np.subtract(acc[LAST], acc[LORA]), np.subtract(acc[LAST], acc["full"])
    p1, p2 = st.ttest_1samp(d1, 0).pvalue, st.ttest_1samp(d2, 0).pvalue
    holm = sorted([p1, p2])
    holm = {p: min(1.0, max(holm[0] * 2, holm[1]) if p == holm[1] else holm[0] * 2) for p in holm}  # by hand, k=2
    c, p = tests[f"{LAST} vs {LORA}"]
    assert c.mean_diff == pytest.approx(d1.mean()) and p == pytest.approx(holm[p1])
    c, p = tests[f"{LAST} vs full"]
    assert c.mean_diff == pytest.approx(d2.mean()) and p == pytest.approx(holm[p2])
