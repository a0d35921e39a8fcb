"""The composition study: pipelines that mean something, the factorial analysis on simulated data, and the
cells against independent computations (the plain compressed model, the claims ledger's arms)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from craftlab.analysis import factorial
from craftlab.studies.compose import Pipeline, compose, design_pipelines, endpoint_setting

GRID = 1 / 359  # accuracy moves by one test image


def simulate(rng, n_seeds, effects, inter=None, seed_sd=0.03, cell_sd=0.006, cnn=True):
    """A full design's long table: additive effects (+ planted interactions) + a seed effect + cell noise,
    on the 1/359 grid."""
    inter = inter or {}
    rows = []
    bns = (False, True) if cnn else (False,)
    for s in range(n_seeds):
        u = rng.normal(0, seed_sd)
        for sam, bn, comp in itertools.product((False, True), bns, ("none", "qwt", "qwt-v2")):
            on = {"SAM": sam, "BN": bn, "QwT": comp == "qwt", "QwT-v2": comp == "qwt-v2"}
            y = 0.6 + u + sum(v for k, v in effects.items() if on[k])
            y += sum(v for (a, b), v in inter.items() if on[a] and on[b])
            y = np.round((y + rng.normal(0, cell_sd)) / GRID) * GRID
            rows.append({"sam": sam, "bn": bn, "compensation": comp, "seed": s, "accuracy": y})
    return pd.DataFrame(rows)


EFFECTS = {"SAM": 0.05, "BN": 0.10, "QwT": 0.02, "QwT-v2": 0.06}


def test_planted_main_effects_and_interaction_are_recovered():
    t = simulate(np.random.default_rng(0), 12, EFFECTS, {("SAM", "BN"): -0.04})
    res = factorial.analyze(t)
    m = res.main.set_index("step")
    # a main effect is averaged over the other factor's levels: SAM's is 0.05 - 0.04 / 2
    expected = {"SAM": 0.03, "BN": 0.08, "QwT": 0.02, "QwT-v2": 0.06}
    for step, v in expected.items():
        assert m.loc[step, "ci_low"] < v < m.loc[step, "ci_high"], step
        assert abs(m.loc[step, "mean_diff"] - v) < 0.006, step
    i = res.interactions.set_index("step")
    assert i.loc["SAM × BN", "ci_low"] < -0.04 < i.loc["SAM × BN", "ci_high"]
    assert i.loc["SAM × BN", "word"] == "overlap" and i.loc["SAM × BN", "p_adj"] < 0.05
    for other in ("SAM × QwT", "SAM × QwT-v2", "BN × QwT", "BN × QwT-v2"):
        assert abs(i.loc[other, "mean_diff"]) < 0.006
    a = res.additivity.iloc[0]  # full (SAM + BN + QwT-v2) vs the sum of the parts: the planted -0.04
    assert a["ci_low"] < -0.04 < a["ci_high"] and a["word"] == "overlap"
    assert abs(a["full_gain"] - (0.05 + 0.10 + 0.06 - 0.04)) < 0.008
    assert any("SAM × BN interaction" in line and "overlap" for line in res.lines)


def test_no_interaction_on_additive_data_at_most_5_percent():
    rng = np.random.default_rng(1)
    hits = sims = 0
    for _ in range(300):
        t = simulate(rng, 5, EFFECTS, seed_sd=0.03, cell_sd=0.01)
        i = factorial.interactions(t)
        hits += bool((i["p_adj"] < 0.05).any())
        sims += 1
    assert hits / sims <= 0.05, f"false interactions in {hits}/{sims} additive designs"


def test_additive_data_reads_add_up_with_enough_seeds():
    t = simulate(np.random.default_rng(2), 20, EFFECTS, cell_sd=0.002)
    res = factorial.analyze(t)
    assert set(res.interactions["word"]) == {"add up"}
    assert res.additivity.iloc[0]["word"] == "add up"


def test_waterfall_increments_sum_to_the_full_gain():
    t = simulate(np.random.default_rng(3), 6, EFFECTS, {("SAM", "QwT-v2"): -0.03})
    w = factorial.waterfall(t, ["BN", "QwT-v2", "SAM"])
    steps = w[w["kind"] == "step"]
    assert list(steps["step"]) == ["BN", "QwT-v2", "SAM"]
    cells = t.groupby(["sam", "bn", "compensation"])["accuracy"].mean()
    assert np.isclose(steps["mean_diff"].sum(), cells[(True, True, "qwt-v2")] - cells[(False, False, "none")])
    assert np.isclose(w.iloc[-1]["level"], cells[(True, True, "qwt-v2")])
    frac = t[(t["sam"] & t["bn"] & (t["compensation"] == "qwt-v2"))
             | ((t["sam"].astype(int) + t["bn"].astype(int) + (t["compensation"] != "none")) <= 1)]
    with pytest.raises(ValueError, match="design='full'"):
        factorial.waterfall(frac, ["BN", "SAM"])
    assert len(factorial.main_effects(frac)) == 4  # the fractional design still gives every main effect
    assert len(factorial.interactions(frac)) == 0 and len(factorial.additivity(frac)) == 1
    other = t[t["bn"] & (t["compensation"] != "none")].assign(bn_last=True, accuracy=0.0)  # outside the factorial
    both = pd.concat([t.assign(bn_last=False), other], ignore_index=True)
    pd.testing.assert_frame_equal(factorial.main_effects(both), factorial.main_effects(t))


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="resnet-tiny", compensation="qwt"), "uncompressed"),
    (dict(model="resnet-tiny", bn=True), "uncompressed"),
    (dict(model="vit-tiny", compression="W3A3 repq", bn=True), "ViT has no BatchNorm"),
    (dict(model="resnet-tiny", supernet=True), "out of a CNN subnet's reach"),
    (dict(model="vit-tiny", compression="W3A3 repq", supernet=True), "the supernet pick is the pipeline's compression"),
    (dict(model="vit-tiny", supernet=True, compensation="qwt-v2"), "compensation of a subnet is not implemented"),
    (dict(model="resnet-tiny", compression="wanda 70%", bn=True, compensation="qwt-v2"), "pruned"),
    (dict(model="vit-tiny", finetune="sgd"), "fine-tuning step"),
    (dict(model="vit-tiny", pretrain="snt"), "pretraining step"),
    (dict(model="resnet-tiny", compression="W4A4", bn=True, bn_last=True), "bn_last"),
])
def test_meaningless_pipelines_say_which_step_and_why(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Pipeline(**kwargs).validate()


def test_designs_and_budget():
    assert endpoint_setting("vit-tiny") == "W3A3 repq" and endpoint_setting("resnet-tiny") == "W4A4"
    full = design_pipelines("resnet-tiny", "full")
    assert len(full) == 16 and len({p.label for p in full}) == 16  # 12 factorial cells + 4 with BN last
    assert sum(p.bn_last for p in full) == 4 and "SAM ρ=0.05 → W4A4 → QwT-v2 → +BN" in {p.label for p in full}
    frac = design_pipelines("resnet-tiny", "fractional")
    assert [p.label for p in frac][-1] == "SAM ρ=0.05 → W4A4 → +BN → QwT-v2" and len(frac) == 6
    assert len(design_pipelines("vit-tiny", "full")) == 6
    with pytest.raises(ValueError, match=r"16 pipelines × 20 seeds = 320 .*--design fractional \(120 runs\)"):
        compose("resnet-tiny", "full", seeds=20, budget=100)
    sn = design_pipelines("vit-tiny", "supernet")
    full_labels = {p.label for p in design_pipelines("vit-tiny", "full")}
    assert [p.label for p in sn if p.supernet] == ["AdamW → supernet pick ≤ 5%", "SAM ρ=0.05 → supernet pick ≤ 5%"]
    assert {p.label for p in sn if not p.supernet} <= full_labels and len(sn) == 6  # PTQ cells: the full design's
    with pytest.raises(ValueError, match="design 'supernet' on resnet-tiny"):
        design_pipelines("resnet-tiny", "supernet")
    with pytest.raises(ValueError, match="design"):
        design_pipelines("resnet-tiny", "half")
    with pytest.raises(ValueError, match="seeds"):
        compose("resnet-tiny", seeds=0)


@pytest.fixture(scope="module")
def resnet_cells():
    """One AdamW resnet-tiny run (seed 0, trained once in the test cache) through the fractional design."""
    pipes = [p for p in design_pipelines("resnet-tiny", "fractional") if p.finetune == "adamw"]
    pipes.append(Pipeline("resnet-tiny"))  # uncompressed
    pipes.append(Pipeline("resnet-tiny", "adamw", "W4A4", True, "qwt-v2", bn_last=True))
    return compose("resnet-tiny", seeds=[0], pipelines=pipes, use_cache=False).set_index("label")


def test_every_step_off_is_the_plain_compressed_model(resnet_cells):
    import craftlab
    from craftlab.train.runs import RunSpec

    path = craftlab.get_run(RunSpec(model="resnet-tiny", seed=0), progress=False)
    model = craftlab.load_checkpoint(path)
    data = craftlab.load_data("digits", model=craftlab.build_model("resnet-tiny"))
    plain = craftlab.compress(model, w_bits=4, a_bits=4, calib=data.calib, seed=0)
    assert resnet_cells.loc["AdamW → W4A4", "accuracy"] == craftlab.evaluate(plain, data.test)["accuracy"]
    assert resnet_cells.loc["AdamW → uncompressed", "accuracy"] == pytest.approx(
        craftlab.read_meta(path)["metrics"]["test_accuracy"])
    other_order = craftlab.recalibrate_bn(craftlab.compress(model, w_bits=4, a_bits=4, calib=data.calib, seed=0,
                                                            compensation="qwt-v2"), data.calib)
    assert resnet_cells.loc["AdamW → W4A4 → QwT-v2 → +BN", "accuracy"] == craftlab.evaluate(
        other_order, data.test)["accuracy"]
    assert resnet_cells.loc["AdamW → W4A4 → QwT", "params_added"] > 0
    assert resnet_cells.loc["AdamW → W4A4 → QwT-v2", "params_added"] == 0  # folded


def test_each_step_alone_is_the_ledgers_single_method_result(resnet_cells):
    bench = pytest.importorskip("benchmarks.bench_claims")
    from craftlab.analysis.ledger import claim

    c = claim("qwt2-resnet")  # baseline "PTQ +BN", treatment "PTQ + QwT-v2"; qwt-resnet's treatment "PTQ + QwT"
    for label, arm in (("AdamW → W4A4 → +BN", "PTQ +BN"), ("AdamW → W4A4 → QwT", "PTQ + QwT"),
                       ("AdamW → W4A4 → QwT-v2", "PTQ + QwT-v2")):
        assert resnet_cells.loc[label, "accuracy"] == bench._arm_correct(c, arm, 0).mean(), label


def test_sam_alone_is_the_ledgers_craft_arm():
    bench = pytest.importorskip("benchmarks.bench_claims")
    from craftlab.analysis.ledger import claim

    c = claim("craft-resnet")  # SAM ρ=0.05 at wanda 70% +BN
    t = compose("resnet-tiny", seeds=[0], pipelines=[Pipeline("resnet-tiny", "sam", "wanda 70%", bn=True)],
                use_cache=False)
    assert t["accuracy"].iloc[0] == bench._arm_correct(c, "SAM ρ=0.05", 0).mean()
    assert t["train_s"].iloc[0] > 0 and t["run_key"].iloc[0] == "resnet-tiny-digits-adamw+sam0.05-e8-s0"


def test_cli_registers_compose_and_reports_bad_input(capsys):
    from craftlab.cli import main

    assert main(["compose", "--model", "resnet-tiny", "--compression", "x", "--seeds", "2"]) == 2
    assert "cannot read compression setting" in capsys.readouterr().err
    assert main(["compose", "--model", "resnet-tiny", "--seeds", "30", "--budget", "50"]) == 2
    assert "--design fractional" in capsys.readouterr().err


def test_figures_show_each_step_and_its_ci():
    from craftlab.viz.compose_figures import interaction_figure, waterfall_figure

    t = simulate(np.random.default_rng(4), 6, EFFECTS)
    w1, w2 = factorial.waterfall(t, ["BN", "SAM"]), factorial.waterfall(t, ["SAM", "BN"])
    fig = waterfall_figure({"BN first": w1, "SAM first": w2}, title="sim")
    bars = [tr for tr in fig.data if tr.type == "bar"]
    assert [b.x[0] for b in bars[:4]] == ["compressed", "+ BN", "+ SAM", "full pipeline"]
    assert np.isclose(bars[1].y[0], 100 * w1.iloc[1]["mean_diff"])
    assert np.isclose(bars[2].base[0], 100 * w1.iloc[1]["level"])
    assert np.isclose(bars[3].y[0], 100 * w1.iloc[-1]["level"]) and np.isclose(bars[7].y[0], bars[3].y[0])
    assert np.isclose(bars[1].error_y.array[0], 100 * (w1.iloc[1]["ci_high"] - w1.iloc[1]["mean_diff"]))
    f = interaction_figure(t, "SAM", "BN")
    assert [tr.name for tr in f.data] == ["BN off", "BN on"]
    off = t[~t["sam"] & ~t["bn"]].groupby("seed")["accuracy"].mean().mean()
    assert np.isclose(f.data[0].y[0], 100 * off)


def test_power_columns_follow_the_ledgers_rule():
    from craftlab.analysis.power import power, seeds_for_power

    t = simulate(np.random.default_rng(5), 8, EFFECTS, cell_sd=0.02)
    i = factorial.interactions(t).iloc[0]
    need = seeds_for_power(0.03, i["sd_diff"], min_n=2)
    assert i["seeds_for_3pp"] == need and power(0.03, i["sd_diff"], need) >= 0.8 > power(0.03, i["sd_diff"], need - 1)
    assert power(i["detectable"], i["sd_diff"], 8) == pytest.approx(0.8, abs=1e-3)


def test_supernet_factor_main_effect_and_interaction_with_sam():
    """The supernet design's table (fine-tuning × {PTQ, PTQ + QwT-v2, supernet pick}) on simulated data: the
    planted supernet effect and SAM × supernet interaction come back; QwT-v2's effect is read from PTQ cells only."""
    rng, rows = np.random.default_rng(7), []
    for s in range(16):
        u = rng.normal(0, 0.03)
        for sam, last in itertools.product((False, True), ("ptq", "qwt-v2", "supernet")):
            y = 0.85 + u + 0.01 * sam + 0.02 * (last == "qwt-v2") + 0.07 * (last == "supernet")
            y += -0.02 * (sam and last == "supernet")
            y = np.round((y + rng.normal(0, 0.004)) / GRID) * GRID
            rows.append({"sam": sam, "bn": False, "compensation": "qwt-v2" if last == "qwt-v2" else "none",
                         "supernet": last == "supernet", "seed": s, "accuracy": y})
    t = pd.DataFrame(rows)
    res = factorial.analyze(t)
    m = res.main.set_index("step")
    assert set(m.index) == {"SAM", "QwT-v2", "supernet"}
    for step, v in {"supernet": 0.07 - 0.02 / 2, "QwT-v2": 0.02}.items():
        assert m.loc[step, "ci_low"] < v < m.loc[step, "ci_high"], step
    i = res.interactions.set_index("step")
    assert i.loc["SAM × supernet", "ci_low"] < -0.02 < i.loc["SAM × supernet", "ci_high"]
    assert i.loc["SAM × supernet", "word"] == "overlap"
    assert abs(i.loc["SAM × QwT-v2", "mean_diff"]) < 0.006
    from craftlab.viz.compose_figures import interaction_figure

    f = interaction_figure(t, "SAM", "supernet")  # the QwT-v2 cells have no supernet twin: left out
    plain = t[~t["sam"] & ~t["supernet"] & (t["compensation"] == "none")]["accuracy"].mean()
    assert np.isclose(f.data[0].y[0], 100 * plain)


@pytest.mark.slow
def test_supernet_step_alone_is_the_supernet_benchmarks_pick():
    """AdamW → supernet pick ≤ 5 % is the pick ``benchmarks/bench_supernet.py`` reports (the ledger's supernet
    row reads that table), and the cell's accuracy is the exported subnet's, evaluated independently."""
    import craftlab
    from craftlab.studies.compose_supernet import supernet_spec
    from craftlab.supernet import get_supernet, load_supernet

    bench = pytest.importorskip("benchmarks.bench_supernet")
    t = compose("vit-tiny", seeds=[0], pipelines=[Pipeline("vit-tiny", supernet=True)], use_cache=False).iloc[0]
    _, picks, _ = bench.run_model("vit-tiny", 0)
    pick = next(q for q in picks if abs(q["budget_pct"] - 5.0) < 1e-6)
    assert t["accuracy"] == pick["pick_test"] and t["setting"].startswith(f"pick ≤ 5%: {pick['pick']} (")
    sn = load_supernet(get_supernet(supernet_spec("vit-tiny", 0.0, 0)))
    uniform = {sn.space.label(c): c for c in (sn.space.uniform(w, a) for w in sn.space.w_bits
                                                for a in sn.space.a_bits)}
    cfg = uniform.get(pick["pick"])
    if cfg is not None:  # a uniform pick: its exported model, evaluated by craftlab.evaluate
        data = craftlab.load_data("digits", model=craftlab.build_model("vit-tiny"))
        assert craftlab.evaluate(sn.export(cfg), data.test)["accuracy"] == pytest.approx(t["accuracy"], abs=1e-9)
        assert t["bitops_total"] == sn.bitops(cfg) <= 0.05 * sn.references()["FP32"]
