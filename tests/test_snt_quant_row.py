"""The ledger's snt-resnet-quant row: its endpoint is the one the rule in its ``why`` picks from the Adam pilot, the
pilot never holds the treatment arm, and its seeds follow the ledger's power rule."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from craftlab.analysis.ledger import SNT_QUANT_RULE, claim
from craftlab.studies.snt import QUANT_BN_CANDIDATES, endpoint_by_loss

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_endpoint_rule_by_hand():
    t = pd.DataFrame({"seed": [0] * 5 + [1] * 5, "setting": ["FP32", *QUANT_BN_CANDIDATES] * 2,
                      "accuracy": [0.96, 0.95, 0.90, 0.60, 0.70, 0.96, 0.96, 0.92, 0.80, 0.60]})
    # Adam's mean loss: W8A8 0.005, W6A6 0.05, W4A8 0.26, W4A4 0.31
    assert endpoint_by_loss(t) == "W4A4 +BN"
    tie = t.assign(accuracy=[0.9, 0.5, 0.5, 0.9, 0.9] * 2)
    assert endpoint_by_loss(tie) == "W8A8 +BN"  # ties go to the first candidate
    with pytest.raises(ValueError, match="lacks"):
        endpoint_by_loss(t[t["setting"] != "FP32"])


def test_claim_is_preregistered_with_its_rule():
    c = claim("snt-resnet-quant")
    assert c.setting == SNT_QUANT_RULE and c.baseline == "Adam" and c.treatment == "repvgg"
    assert c.effect == pytest.approx(0.054)  # the paper's +5.4 % on quantization
    for cand in QUANT_BN_CANDIDATES:
        assert cand.split(" ")[0] in c.why
    assert "loses the most" in c.why and "never sees the treatment" in c.why
    assert claim("snt-resnet").treatment == c.treatment  # the same stand-in as the pruning row


def test_ledger_row_endpoint_is_the_one_its_why_names():
    ledger, pilot_f = RESULTS / "claims.csv", RESULTS / "snt_quant_pilot.csv"
    if not ledger.exists() or not pilot_f.exists():
        pytest.skip("the snt-resnet-quant row has not been computed in this checkout")
    df = pd.read_csv(ledger).set_index("id")
    if "snt-resnet-quant" not in df.index:
        pytest.skip("the ledger has no snt-resnet-quant row yet")
    row, pilot = df.loc["snt-resnet-quant"], pd.read_csv(pilot_f)
    assert set(pilot["arm"]) == {"Adam"}  # the choice never saw the treatment
    assert sorted(pilot["seed"].unique()) == [0, 1, 2, 3, 4]
    assert set(pilot["setting"]) == {"FP32", *QUANT_BN_CANDIDATES}
    assert row["setting"] == endpoint_by_loss(pilot)
    bench = pytest.importorskip("benchmarks.bench_claims")
    from craftlab.analysis.power import seeds_for_power

    need = seeds_for_power(0.054, max(bench.planning_sd(row["pilot_sd"], 5), 1e-9), 0.05, 0.8, min_n=5, max_n=200)
    assert int(row["seeds_needed"]) == need
    n = int(row["n"])
    if n < min(max(need, bench.MIN_SEEDS), bench.MAX_SEEDS):  # capped by a compute budget: the command says so
        assert row["command"] == f"python -m benchmarks.bench_claims snt-resnet-quant --max-seeds {n}"
    elif pd.notna(row.get("stage1_n", float("nan"))):  # extended once: first stage at the cap, then the rule
        assert int(row["stage1_n"]) == bench.MAX_SEEDS < need and n == min(need, bench.EXTEND_MAX)
        assert row["stage1_status"] == "inconclusive" and row["stage1_detectable"] > row["effect"]
    else:
        assert n == min(max(need, bench.MIN_SEEDS), bench.MAX_SEEDS)
