"""craftlab.studies.adapt (curves): accuracy against epochs and wall time at a learning rate tuned on validation.

Checked against independent computations: the chosen rate against a hand selection from the raw runs, the last
point of a curve against a separate adapt_model run, the per-epoch callback against the run's own history."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import craftlab
from craftlab.adapt import recipes
from craftlab.studies import adapt as curves
from craftlab.train.finetune import eval_loader

ARMS = {"probe": {"method": "linear", "cache": "memory"}, "LAST": {"method": "last", "gap": 2},
        "LoRA": {"method": "lora", "lora_rank": 2}}
LRS = {"probe": [0.003, 0.1], "LAST": [1e-3, 3e-2], "LoRA": [1e-3, 3e-2]}
EPOCHS = 2


@pytest.fixture(scope="module")
def cv(vit, small):
    pytest.importorskip("peft")
    return curves.adapt_curves(vit, small, arms=ARMS, lrs=LRS, seeds=[0, 1], epochs=EPOCHS)


def test_runs_cover_the_grid_and_wall_time_is_cumulative(cv):
    runs = cv.runs
    assert len(runs) == sum(len(v) for v in LRS.values()) * 2 * EPOCHS
    for _, r in runs.groupby(["arm", "lr", "seed"]):
        assert list(r["epoch"]) == list(range(1, EPOCHS + 1))
        assert (r["time_s"] > 0).all()
        assert r["cum_time_s"].to_numpy() == pytest.approx(r["time_s"].cumsum().to_numpy())
        assert r["cum_time_s"].is_monotonic_increasing
    for _, c in cv.curves.groupby("arm"):
        assert c["cum_time_s"].is_monotonic_increasing and list(c["epoch"]) == list(range(1, EPOCHS + 1))
        assert (c["seeds"] == 2).all()
    assert runs[["val_accuracy", "test_accuracy"]].stack().between(0, 1).all()


def test_chosen_rate_is_the_argmax_of_validation_accuracy(cv):
    hand = {}
    for arm in ARMS:
        scores = {}
        for lr in LRS[arm]:
            finals = [r["val_accuracy"] for r in cv.runs.to_dict("records")
                      if r["arm"] == arm and r["lr"] == lr and r["epoch"] == EPOCHS]
            scores[lr] = sum(finals) / len(finals)
        best = max(scores.values())
        tied = [lr for lr, s in scores.items() if s == best]
        if len(tied) > 1:  # the documented tie-break: the lower mean validation loss
            loss = cv.grid.set_index(["arm", "lr"])["val_loss"]
            tied = [min(tied, key=lambda lr: (loss[(arm, lr)], lr))]
        hand[arm] = tied[0]
    assert cv.chosen == hand
    assert cv.grid["chosen"].sum() == len(ARMS)
    # the curve is the chosen rate's runs averaged over seeds
    for arm, lr in cv.chosen.items():
        r = cv.runs[(cv.runs["arm"] == arm) & (cv.runs["lr"] == lr)].groupby("epoch")["test_accuracy"].mean()
        c = cv.curves[cv.curves["arm"] == arm].set_index("epoch")
        assert c["test_accuracy"].to_numpy() == pytest.approx(r.to_numpy())
        assert (c["lr"] == lr).all()
    # on this tiny slice the probe at lr 0.003 barely moves from chance in 2 epochs: the grid must tell rates apart
    assert cv.grid.groupby("arm")["val_accuracy"].agg(lambda v: v.max() - v.min()).max() > 0


def test_choose_breaks_ties_by_loss_then_the_smaller_rate():
    g = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 2, "lr": [0.3, 0.1, 0.03, 0.1, 0.01],
                      "val_accuracy": [0.9, 0.9, 0.8, 0.5, 0.5], "val_loss": [0.4, 0.2, 0.1, 0.3, 0.3]})
    out = curves.choose(g)
    assert list(out["chosen"]) == [False, True, False, False, True]
    assert "chosen" not in g  # a copy


def test_last_point_equals_an_independent_run(cv, vit, small):
    for arm, lr in cv.chosen.items():
        kw = dict(ARMS[arm])
        res = recipes.adapt_model(vit, small, kw.pop("method"), epochs=EPOCHS, lr=lr, seed=1, **kw)
        row = cv.runs[(cv.runs["arm"] == arm) & (cv.runs["lr"] == lr) & (cv.runs["seed"] == 1)
                      & (cv.runs["epoch"] == EPOCHS)].iloc[0]
        assert row["val_accuracy"] == res.metrics["val_accuracy"]
        assert row["test_accuracy"] == pytest.approx(res.metrics["test_accuracy"], abs=0.5 / 60)


@pytest.mark.parametrize("method,kw", [("last", {"gap": 2}), ("full", {})])
def test_callback_sees_each_epoch_and_the_model_being_trained(vit, small, unchanged, method, kw):
    seen = []

    def cb(rec, net):
        seen.append((dict(rec), craftlab.evaluate(net, eval_loader(small, "val"))))
        rec["val_accuracy"] = -1.0  # a copy: the run's history is not changed by the callback

    state = torch.get_rng_state()
    with unchanged(vit):
        res = recipes.adapt_model(vit, small, method, epochs=2, callback=cb, **kw)
    assert torch.equal(state, torch.get_rng_state())
    assert [s[0]["epoch"] for s in seen] == [1, 2]
    for (rec, ev), h in zip(seen, res.history):
        assert rec["val_accuracy"] == h["val_accuracy"] and h["val_accuracy"] >= 0
        assert ev["accuracy"] == pytest.approx(h["val_accuracy"], abs=0.5 / 60)  # the live model, evaluated
    with pytest.raises(TypeError, match="callback"):
        recipes.adapt_model(vit, small, method, epochs=1, callback=3, **kw)


def test_curves_leave_model_and_rng_alone(vit, small, unchanged):
    state = torch.get_rng_state()
    with unchanged(vit):
        cv = curves.adapt_curves(vit, small, arms={"probe": ARMS["probe"]}, lrs={"probe": [0.1]}, seeds=[0],
                                 epochs=1)
    assert torch.equal(state, torch.get_rng_state())
    assert cv.chosen == {"probe": 0.1} and len(cv.curves) == 1


def test_lr_grid_and_bad_input(vit, small):
    assert curves.lr_grid("last") == pytest.approx([recipes.DEFAULT_LR["last"] * f for f in (1 / 3, 1, 3)],
                                                    rel=1e-3)
    with pytest.raises(ValueError, match="unknown adaptation method"):
        curves.lr_grid("qlora")
    probe = {"probe": ARMS["probe"]}
    bad = [dict(arms={"x": {"method": "qlora"}}), dict(arms={"x": {"method": "last", "lr": 0.1}}),
           dict(arms=probe, lrs={"y": [0.1]}), dict(arms=probe, lrs={"probe": [-1.0]}),
           dict(arms=probe, lrs={"probe": []}), dict(arms=probe, lrs={"probe": [0.1, 0.1]}),
           dict(arms=probe, seeds=[0, 0]), dict(arms=probe, seeds=[]), dict(arms=probe, epochs=0),
           dict(arms={})]
    for kwargs in bad:
        with pytest.raises(ValueError):
            curves.adapt_curves(vit, small, **kwargs)
    with pytest.raises(TypeError, match="DataBundle"):
        curves.adapt_curves(vit, "digits")


def test_reading_states_the_hand_computed_difference(cv):
    lr = cv.chosen
    last = cv.runs[cv.runs["epoch"] == EPOCHS]
    by_seed = {a: last[(last["arm"] == a) & (last["lr"] == lr[a])].set_index("seed")["test_accuracy"]
               for a in ("LAST", "LoRA")}
    diff = (by_seed["LAST"] - by_seed["LoRA"]).mean()
    text = curves.reading(cv, ref="LoRA", arm="LAST")
    assert f"tuned LAST − tuned LoRA = {100 * diff:+.1f} pp" in text
    assert curves.reading(cv, ref="absent", arm="LAST") == ""
    again = curves.summarize(cv.runs)  # a table read back gives the same choice and curves
    assert again.chosen == cv.chosen
    pd.testing.assert_frame_equal(again.curves, cv.curves)
    with pytest.raises(ValueError, match="missing"):
        curves.summarize(cv.runs.drop(columns="val_loss"))


@pytest.mark.parametrize("widen", [1, 2])
def test_widen_adds_rates_beyond_a_chosen_edge_round_by_round(vit, small, widen):
    grid0 = [1e-4, 3e-4]
    cv = curves.adapt_curves(vit, small, arms={"probe": ARMS["probe"]}, lrs={"probe": grid0}, seeds=[0], epochs=1,
                             widen=widen)
    # replay the rule by hand on the returned runs: each round, a chosen edge gets one rate beyond it
    tried = list(grid0)
    for _ in range(widen):
        best = curves.summarize(cv.runs[cv.runs["lr"].isin(tried)]).chosen["probe"]
        if best not in (min(tried), max(tried)):
            break
        tried.append(float(f"{best * 3 if best == max(tried) else best / 3:.3g}"))
    assert sorted(cv.grid["lr"]) == pytest.approx(sorted(tried), rel=1e-6)
    assert len(tried) == len(grid0) + widen  # on this slice these rates are far too small: every round widens
    assert all(len(cv.runs[cv.runs["lr"] == lr]) == 1 for lr in cv.grid["lr"])
    assert list(cv.runs["lr"]) == sorted(cv.runs["lr"])  # runs kept in (arm, lr, seed, epoch) order
    with pytest.raises(ValueError, match="widen"):
        curves.adapt_curves(vit, small, arms={"probe": ARMS["probe"]}, lrs={"probe": grid0}, seeds=[0], epochs=1,
                            widen=-1)
