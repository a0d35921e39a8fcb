"""The SNT pretraining factor in the composition study: its design, its bad input, the factorial on planted data,
and one real cell against the SNT study's own transfer run compressed by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from craftlab.analysis import factorial
from craftlab.studies.compose import Pipeline, compose, design_pipelines


def simulate(rng, n_seeds, effects, inter, cell_sd=0.006):
    """The 'snt' design's long table (SNT × SAM × BN × {none, QwT-v2}) on the 1/359 grid."""
    rows = []
    for s in range(n_seeds):
        u = rng.normal(0, 0.03)
        for snt, sam, bn, comp in itertools.product((False, True), (False, True), (False, True), ("none", "qwt-v2")):
            on = {"SNT": snt, "SAM": sam, "BN": bn, "QwT-v2": comp == "qwt-v2"}
            y = 0.6 + u + sum(v for k, v in effects.items() if on[k])
            y += sum(v for (a, b), v in inter.items() if on[a] and on[b])
            rows.append({"snt": snt, "sam": sam, "bn": bn, "compensation": comp, "seed": s,
                         "pretrain": "snt-repvgg" if snt else "snt-adam",
                         "accuracy": np.round((y + rng.normal(0, cell_sd)) * 359) / 359})
    return pd.DataFrame(rows)


def test_snt_design_and_bad_input():
    pipes = design_pipelines("resnet-tiny", "snt")
    assert len(pipes) == 16 and {p.pretrain for p in pipes} == {"snt-adam", "snt-repvgg"}
    assert {p.compensation for p in pipes} == {None, "qwt-v2"} and not any(p.bn_last for p in pipes)
    assert pipes[-1].label == "pretrain snt-repvgg → SAM ρ=0.05 → W4A4 → +BN → QwT-v2"
    assert pipes[-1].steps["snt"] and not pipes[0].steps["snt"]
    with pytest.raises(ValueError, match="convolutional models only"):
        design_pipelines("vit-tiny", "snt")
    with pytest.raises(ValueError, match="convolutional models only"):
        Pipeline("vit-tiny", compression="W3A3 repq", pretrain="snt-repvgg").validate()
    with pytest.raises(ValueError, match="pretraining step 'sgd'"):
        Pipeline("resnet-tiny", compression="W4A4", pretrain="sgd").validate()


def test_planted_snt_effect_and_its_interaction_are_recovered():
    t = simulate(np.random.default_rng(0), 12, {"SNT": 0.04, "SAM": 0.05, "BN": 0.08, "QwT-v2": 0.02},
                 {("SNT", "SAM"): -0.04})
    res = factorial.analyze(t)
    m = res.main.set_index("step")
    assert abs(m.loc["SNT", "mean_diff"] - (0.04 - 0.04 / 2)) < 0.005  # averaged over SAM's levels
    i = res.interactions.set_index("step")
    assert i.loc["SNT × SAM", "ci_low"] < -0.04 < i.loc["SNT × SAM", "ci_high"]
    assert i.loc["SNT × SAM", "word"] == "overlap"
    for other in ("SNT × BN", "SNT × QwT-v2"):
        assert abs(i.loc[other, "mean_diff"]) < 0.006, other
    a = res.additivity.iloc[0]
    assert set(a["step"].split(" + ")) == {"SAM", "BN", "QwT-v2", "SNT"}
    assert a["ci_low"] < -0.04 < a["ci_high"]
    w = factorial.waterfall(t, ["SNT", "SAM"])
    assert w.iloc[1]["step"] == "SNT" and abs(w.iloc[1]["mean_diff"] - 0.04) < 0.006


def test_tables_of_the_two_pretraining_families_are_not_mixed():
    t = simulate(np.random.default_rng(1), 3, {}, {})
    mixed = pd.concat([t, t[t["pretrain"] == "snt-adam"].assign(pretrain="adam", snt=False, seed=t["seed"] + 10)])
    with pytest.raises(ValueError, match="mixes the zoo's pretraining"):
        factorial.analyze(mixed)


def test_an_snt_cell_is_the_snt_studys_transfer_run_compressed():
    import craftlab
    from craftlab.train.pretrain import get_transfer
    from craftlab.train.pretrain_runs import PretrainSpec

    p = Pipeline("resnet-tiny", "adamw", "W4A4", pretrain="snt-repvgg")
    row = compose("resnet-tiny", seeds=[0], pipelines=[p], use_cache=False).iloc[0]
    path = get_transfer(PretrainSpec("resnet-tiny", optimizer="adam", seed=0, transform="repvgg"), "digits", epochs=8,
                        progress=False)
    model = craftlab.load_checkpoint(path)
    data = craftlab.load_data("digits", model=craftlab.build_model("resnet-tiny"))
    q = craftlab.compress(model, w_bits=4, a_bits=4, calib=data.calib, seed=0)
    assert row["accuracy"] == craftlab.evaluate(q, data.test)["accuracy"]
    assert row["pretrain"] == "snt-repvgg" and row["snt"] and row["run_key"].endswith(path.name)
