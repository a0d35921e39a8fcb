"""Per-step costs of a composition pipeline: one row per step, in the pipeline's order, summing to the chain's wall
time, ending in the study's own cell (same accuracy), with each step's size/BitOPs effect measured, not assumed."""

from __future__ import annotations

import pandas as pd
import pytest

from craftlab.analysis.compose import Pipeline, compose
from craftlab.analysis.compose_costs import STEP_NAMES, cost_summary, step_costs


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
