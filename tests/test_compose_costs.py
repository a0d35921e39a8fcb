"""Per-step costs of a composition pipeline: one row per step, in the pipeline's order, summing to the chain's wall
time, ending in the study's own cell (same accuracy), with each step's size/BitOPs effect measured, not assumed."""

from __future__ import annotations

import pandas as pd
import pytest

from craftlab.studies.compose import Pipeline, compose
from craftlab.studies.compose_costs import STEP_NAMES, cost_summary, step_costs


@pytest.fixture(scope="module")
def qwt_costs():
    return step_costs(Pipeline("resnet-tiny", "adamw", "W4A4", bn=True, compensation="qwt"), seed=0)


def test_one_row_per_step_summing_to_the_pipelines_time(qwt_costs):
    t = qwt_costs
    assert list(t["step"]) == list(STEP_NAMES)
    assert list(t["method"]) == ["W4A4", "BN", "QwT", "test images"]
    assert (t["seconds"] > 0).all()
    total = t.attrs["pipeline_s"]
    # the chain's own timer only adds loop overhead around the timed steps
    assert t["seconds"].sum() <= total + 1e-6
    assert total - t["seconds"].sum() < 0.05 + 0.02 * total


def test_steps_end_in_the_studys_cell_and_measure_their_effect(qwt_costs):
    import craftlab
    from craftlab.train.runs import RunSpec

    t = qwt_costs.set_index("step")
    cell = compose("resnet-tiny", seeds=[0], pipelines=[Pipeline("resnet-tiny", "adamw", "W4A4", True, "qwt")],
                   use_cache=False).iloc[0]
    assert t.loc["evaluation", "accuracy"] == cell["accuracy"]
    assert t["accuracy"].drop("evaluation").isna().all()
    # an independent size: the float model at 32 bits per parameter
    model = craftlab.load_checkpoint(craftlab.get_run(RunSpec(model="resnet-tiny", seed=0), progress=False))
    n = sum(p.numel() for p in model.parameters())
    assert t.loc["compression", "fp_params"] == n
    assert t.loc["compression", "fp_size_mb"] == pytest.approx(32 * n / 8 / 2**20)
    assert t.loc["compression", "size_mb"] < t.loc["compression", "fp_size_mb"] / 4  # 4-bit weights
    assert t.loc["BN re-estimation", "size_mb"] == t.loc["compression", "size_mb"]  # BN adds nothing
    added = t.loc["compensation fit", "params_added"]
    assert added == cell["params_added"] > 0
    assert t.loc["compensation fit", "params"] == t.loc["BN re-estimation", "params"] + added
    assert t.loc["compensation fit", "bitops"] > t.loc["BN re-estimation", "bitops"]  # QwT's float side path
    s = cost_summary([qwt_costs]).set_index("step")
    assert list(s.index) == list(STEP_NAMES)
    assert s.loc["compensation fit", "d_params"] == added and s.loc["BN re-estimation", "d_bitops"] == 0
    assert s.loc["compression", "d_size_mb"] == pytest.approx(t.loc["compression", "size_mb"]
                                                              - t.loc["compression", "fp_size_mb"])


def test_order_and_folded_compensation():
    p = Pipeline("resnet-tiny", "adamw", "W4A4", bn=True, compensation="qwt-v2", bn_last=True)
    t = step_costs(p, seed=0)
    assert list(t["step"]) == ["compression", "compensation fit", "BN re-estimation", "evaluation"]
    assert (t["params_added"] == 0).all() and t["params"].nunique() == 1  # folded: no parameters added
    cell = compose("resnet-tiny", seeds=[0], pipelines=[p], use_cache=False).iloc[0]
    assert t["accuracy"].iloc[-1] == cell["accuracy"]
    both = cost_summary([t, step_costs(Pipeline("resnet-tiny", "adamw", "W4A4"), seed=0)])
    assert isinstance(both, pd.DataFrame)
    assert both.set_index(["step", "method"]).loc[("compression", "W4A4"), "runs"] == 2


def test_bad_input_names_the_step():
    with pytest.raises(ValueError, match="pruning step"):
        step_costs(Pipeline("resnet-tiny", "adamw", "wanda 70%", bn=True), seed=0)
    with pytest.raises(ValueError, match="ViT has no BatchNorm"):
        step_costs(Pipeline("vit-tiny", "adamw", "W3A3 repq", bn=True), seed=0)
    with pytest.raises(ValueError, match="seed"):
        step_costs(Pipeline("resnet-tiny", "adamw", "W4A4"), seed=-1)
    with pytest.raises(ValueError, match="no step-cost"):
        cost_summary([])


def _sim(n_seeds, rng, sam_gain=0.05, bn_gain=0.0, noise=0.02):
    """A resnet-like full design on the 1/359 grid: SAM gains `sam_gain`, BN `bn_gain`, no compensation gain."""
    import itertools

    import numpy as np

    rows = []
    for s in range(n_seeds):
        u = rng.normal(0, 0.03)
        for sam, bn, comp in itertools.product((False, True), (False, True), ("none", "qwt", "qwt-v2")):
            y = 0.6 + u + sam_gain * sam + bn_gain * bn + rng.normal(0, noise)
            rows.append({"sam": sam, "bn": bn, "compensation": comp, "seed": s,
                         "accuracy": np.round(y * 359) / 359})
    return pd.DataFrame(rows)


def test_seeds_by_the_ledgers_rule_from_a_pilot():
    import numpy as np

    bench = pytest.importorskip("benchmarks.bench_compose")
    from benchmarks.bench_claims import planning_sd
    from craftlab.analysis.power import seeds_for_power

    t = _sim(10, np.random.default_rng(0))
    rule = bench.seeds_by_rule(t).set_index(["kind", "step"])
    # SAM's main effect by hand: per seed, mean over the 6 SAM-on cells minus the 6 SAM-off cells
    w = t.pivot_table(index="seed", columns="sam", values="accuracy", aggfunc="mean")
    sd = float((w[True] - w[False]).std(ddof=1))
    assert rule.loc[("main", "SAM"), "pilot_sd"] == pytest.approx(sd)
    assert rule.loc[("main", "SAM"), "needed"] == seeds_for_power(0.03, planning_sd(sd, 10), min_n=5, max_n=200)
    # SAM × BN by hand: (y11 − y01) − (y10 − y00), averaged over the compensation levels
    g = t.pivot_table(index="seed", columns=["sam", "bn"], values="accuracy", aggfunc="mean")
    inter = g[(True, True)] - g[(False, True)] - g[(True, False)] + g[(False, False)]
    assert rule.loc[("interaction", "SAM × BN"), "pilot_sd"] == pytest.approx(float(inter.std(ddof=1)))
    assert {"main", "interaction", "additivity"} <= set(rule.index.get_level_values(0))
    r = rule.reset_index()
    assert bench.design_seeds(r.assign(needed=5), "resnet-tiny") == 10  # never fewer than the pilot's
    assert bench.design_seeds(r.assign(needed=17), "resnet-tiny") == 17
    assert bench.design_seeds(r.assign(needed=201), "resnet-tiny") == bench.CAP
    assert bench.design_seeds(r.assign(needed=201), "vit-tiny") == bench.AVAILABLE["vit-tiny"]


def test_waterfall_reading_names_the_steps_not_worth_their_cost():
    import numpy as np

    bench = pytest.importorskip("benchmarks.bench_compose")
    from craftlab.analysis import factorial

    t = _sim(12, np.random.default_rng(1), sam_gain=0.08, bn_gain=0.0, noise=0.01)
    w = factorial.waterfall(t, ["SAM", "BN"])
    cost = {"SAM": {"seconds": 12.0, "what": "fine-tuning", "d_params": 0.0, "d_bitops": 0.0},
            "BN": {"seconds": 0.4, "what": "calibration", "d_params": 0.0, "d_bitops": 0.0}}
    text, bad = bench.waterfall_reading(w, cost)
    assert w.iloc[1]["p"] < 0.05 and w.iloc[1]["mean_diff"] > 0  # SAM pays
    assert [b.split(" ")[0] for b in bad] == ["BN"] and "0.40 s more calibration" in bad[0]
    assert "12 s more fine-tuning" in text
