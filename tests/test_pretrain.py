"""Pretraining as a first-class step (craftlab.pretrain, PretrainSpec, get_pretrain, get_transfer, the CLI):
transforms are applied before training and folded after it, SAM is craftlab.SAM, runs are cached by every
argument, and bad input fails before any training with a message that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import craftlab
from craftlab import transforms as T
from craftlab.cli import main as cli_main
from craftlab.train import pretrain as P
from craftlab.train.pretrain_runs import PretrainSpec, pretrain_dir, recipe, spec_record

CHANCE = float(torch.log(torch.tensor(10.0)))  # cross-entropy of a uniform guess over 10 classes: 2.30


@pytest.fixture(scope="module")
def mnist_small():
    """640 mnist5k training images (a seeded random subset: the split is ordered by class): 512 to train on
    (8 steps of 64 per epoch), 128 to validate and test."""
    full = craftlab.load_data("mnist5k", model=craftlab.build_model("resnet-tiny"))
    x = torch.cat([b[0] for b in full.loader("train", shuffle=False)])
    y = torch.cat([b[1] for b in full.loader("train", shuffle=False)])
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:640]
    x, y = x[idx], y[idx]
    return craftlab.from_tensors(x[:512], y[:512], val=(x[512:], y[512:]), test=(x[512:], y[512:]),
                                 name="mnist5k-640")


def _meta(path) -> dict:
    return json.loads((Path(path) / "craftlab.json").read_text())


@pytest.mark.parametrize("transform", ["expand", "repvgg", "weight-noise"])
def test_transformed_pretraining_trains_and_folds(transform, mnist_small, tmp_path, unchanged):
    """32 steps at lr 1e-2 bring the last epoch's training loss well below chance (measured 0.34-0.48); at lr 1e-7
    (as good as 0) it stays at chance, so the bound is not met by a model that does not learn. The checkpoint is
    the plain architecture and loads like any other."""
    base = craftlab.build_model("resnet-tiny", num_classes=10, seed=0)
    with unchanged(base):
        path = craftlab.pretrain(base, data=mnist_small, optimizer="adam", lr=1e-2, epochs=4, transform=transform,
                                 out=tmp_path / "run", progress=False)
    meta = _meta(path)
    assert meta["history"][0]["train_loss"] > 0.8 * CHANCE
    assert meta["history"][-1]["train_loss"] < CHANCE / 3
    assert meta["transform"]["name"] == transform and "stand-in" in meta["transform"]["reference"]
    assert meta["metrics"]["fold_max_rel_diff"] <= 1e-5
    assert meta["metrics"]["steps"] == 32 and meta["metrics"]["time_per_step_s"] > 0
    assert meta["metrics"]["bn_recalibrated"] == (transform == "weight-noise")
    assert meta["num_parameters"] == sum(p.numel() for p in base.parameters())

    loaded = craftlab.load_checkpoint(path, model=craftlab.create_model("resnet-tiny", pretrained=False))
    assert T.transform_info(loaded) is None and list(loaded.state_dict()) == list(base.state_dict())
    fresh_head = craftlab.create_model("resnet-tiny", num_classes=3, pretrained=path)
    assert torch.equal(fresh_head.conv1.weight, loaded.conv1.weight) and fresh_head.fc.out_features == 3

    stuck = craftlab.pretrain(base, data=mnist_small, optimizer="adam", lr=1e-7, epochs=4, transform=transform,
                              out=tmp_path / "stuck", progress=False)
    assert _meta(stuck)["history"][-1]["train_loss"] > 0.9 * CHANCE


def test_sam_in_pretraining_is_craftlab_sam(mnist_small, tmp_path, monkeypatch):
    steps = []
    first_step = craftlab.SAM.first_step

    def counting(self, zero_grad=False):
        steps.append(self)
        return first_step(self, zero_grad)

    monkeypatch.setattr(craftlab.SAM, "first_step", counting)
    path = craftlab.pretrain(craftlab.build_model("resnet-tiny", num_classes=10), data=mnist_small,
                             optimizer="adam", sam_rho=0.05, transform="repvgg", epochs=1, out=tmp_path / "sam",
                             progress=False)
    assert len(steps) == 8 and all(isinstance(s, craftlab.SAM) for s in steps)
    assert isinstance(steps[0].base_optimizer, torch.optim.Adam) and steps[0].param_groups[0]["rho"] == 0.05
    meta = _meta(path)
    assert meta["sam_rho"] == 0.05 and meta["optimizer"] == "adam"


def test_a_fold_that_changes_the_outputs_is_refused(mnist_small, tmp_path):
    class Sloppy(T.Transform):
        reference = "a test transform whose fold is wrong"

        def parametrization(self, module, generator):
            return nn.Identity()

        def fold(self, model):
            plain = super().fold(model)
            with torch.no_grad():
                plain.fc.weight.mul_(1.5)
            return plain

    T.register_transform("test-sloppy")(Sloppy)
    with pytest.raises(RuntimeError, match="fold is not exact"):
        craftlab.pretrain(craftlab.build_model("resnet-tiny", num_classes=10), data=mnist_small,
                          transform="test-sloppy", epochs=1, out=tmp_path / "x", progress=False)


def test_spec_keys_labels_and_recipe():
    s = PretrainSpec("vit-tiny")
    r = s.resolved()
    assert (r.lr, r.epochs, r.warmup_epochs) == (3e-3, 15, 1.0) and s.key == r.key  # the zoo's recipe
    assert recipe("resnet-tiny", "sgd")["lr"] == 0.05 and recipe("resnet-tiny", "adam")["lr"] == 2e-3
    assert s.key == "vit-tiny-mnist5k-adam-lr0.003-e15-w1-s0" and s.label == "Adam"
    sam = PretrainSpec("resnet-tiny", transform="expand", sam_rho=0.05, seed=2)
    assert sam.arm == "adam+expand+sam0.05" and sam.label == "Adam+expand+SAM ρ=0.05"
    variants = [PretrainSpec("resnet-tiny", **kw) for kw in (
        {}, {"seed": 1}, {"sam_rho": 0.05}, {"transform": "expand"}, {"transform": "expand:rate=4"},
        {"optimizer": "adamw"}, {"lr": 1e-3}, {"epochs": 3}, {"data": "digits"}, {"warmup_epochs": 1})]
    assert len({v.key for v in variants}) == len(variants)
    default_rate = PretrainSpec("resnet-tiny", transform="expand:rate=2")
    assert default_rate.key == PretrainSpec("resnet-tiny", transform="expand").key
    assert spec_record(PretrainSpec("resnet-tiny", transform="expand"))["transform_params"] == {"rate": 2}
    for bad, match in [({"model": "resnet18"}, "zoo model"), ({"optimizer": "adma"}, "did you mean 'adam'"),
                       ({"sam_rho": -1}, "sam_rho"), ({"transform": "expnad"}, "did you mean 'expand'"),
                       ({"seed": 1.5}, "seed")]:
        with pytest.raises(ValueError, match=match):
            PretrainSpec(**{"model": "resnet-tiny", **bad}).resolved()


def test_bad_input_fails_before_training(mnist_small, tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("trained despite bad input")

    monkeypatch.setattr(P, "finetune", no_training)
    seven = craftlab.build_model("resnet-tiny", num_classes=7)
    cases = [
        (lambda: P.pretrain(seven, data=mnist_small, out=tmp_path), r"labels do not match the head: mnist5k-640 has "
                                                                     r"10 classes but the model's head \(fc\) has 7"),
        (lambda: P.pretrain("resnet-tiny", transform="expnad"), "unknown transform 'expnad' .*did you mean 'expand'"),
        (lambda: P.pretrain("vit-tiny", data=mnist_small, transform="repvgg", out=tmp_path),
         r"'repvgg' does not apply to any layer.*patch_embed\.proj \(Conv2d 1→64, 7×7"),
        (lambda: P.pretrain(craftlab.build_model("resnet-tiny", num_classes=10), data=mnist_small), "give out="),
        (lambda: P.pretrain(T.get_transform("repvgg").apply(craftlab.build_model("resnet-tiny", num_classes=10)),
                            data=mnist_small, out=tmp_path), "already carries transform 'repvgg'"),
        (lambda: P.pretrain("resnet-tiny", optimizer="adma"), "did you mean 'adam'"),
        (lambda: P.pretrain("resnet18"), "zoo model"),
        (lambda: P.pretrain("resnet-tiny", sam_rho=-0.1), "sam_rho"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match="model name or a torch.nn.Module"):
        P.pretrain(seven.state_dict())


def test_cli_pretrain_fills_the_cache_that_get_pretrain_and_get_transfer_use(monkeypatch, capsys):
    """`craftlab pretrain --optimizer adam --transform repvgg` writes the run's cache folder; get_pretrain finds it
    there without training again; get_transfer fine-tunes from it once and caches that too."""
    spec = PretrainSpec("resnet-tiny", optimizer="adam", transform="repvgg", epochs=2, seed=3)
    assert cli_main(["pretrain", "--model", "resnet-tiny", "--optimizer", "adam", "--transform", "repvgg",
                     "--epochs", "2", "--seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resnet-tiny [Adam+repvgg]: test accuracy on mnist5k" in out and str(pretrain_dir(spec)) in out
    meta = _meta(pretrain_dir(spec))
    assert meta["pretrain"] == spec_record(spec) and meta["metrics"]["test_accuracy"] > 0.5  # measured 0.9

    calls = []
    real = P.pretrain
    monkeypatch.setattr(P, "pretrain", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert P.get_pretrain(spec) == pretrain_dir(spec) and not calls  # cached
    model = craftlab.create_model("resnet-tiny", num_classes=10, pretrained=P.get_pretrain(spec))
    assert model.fc.out_features == 10

    path = P.get_transfer(spec, "digits", epochs=1)
    assert pretrain_dir(spec) in path.parents and not calls
    ft = craftlab.load_checkpoint(path)
    assert ft.craftlab_meta["transfer"]["pretrain"] == spec_record(spec)
    assert 0 <= ft.craftlab_meta["metrics"]["test_accuracy"] <= 1 and ft.craftlab_meta["epochs"] == 1
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert P.get_transfer(spec, "digits", epochs=1) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # cached, not trained again


def test_cli_pretrain_bad_input(capsys):
    assert cli_main(["pretrain", "--model", "resnet-tiny", "--transform", "expnad"]) == 2
    assert "did you mean 'expand'" in capsys.readouterr().err
    assert cli_main(["pretrain", "--model", "resnet-tiny", "--transform", "repvgg", "--ship"]) == 2
    assert "--ship writes the zoo's foundation" in capsys.readouterr().err
    assert cli_main(["pretrain", "--model", "vit-tiny", "--transform", "repvgg", "--epochs", "1"]) == 2
    assert "patch_embed.proj" in capsys.readouterr().err


def test_study_arms_settings_and_claim_statistics():
    """The study's plumbing without training: arms per model, settings, and the claim check on a synthetic table
    where one arm gains 3 pp at every quantization setting (4 seeds, a little noise) and nothing at pruning."""
    import numpy as np
    import pandas as pd

    from craftlab.studies import snt as S

    built_in = ["expand", "repvgg", "weight-noise"]  # (other tests register their own transforms too)
    vit_arms, resnet_arms = S.snt_arms("vit-tiny", built_in), S.snt_arms("resnet-tiny", built_in)
    assert list(vit_arms) == ["Adam", "SAM", "expand", "expand+SAM", "weight-noise", "weight-noise+SAM"]
    assert set(vit_arms) <= set(S.snt_arms("vit-tiny"))  # default: every registered transform that applies
    assert {"repvgg", "repvgg+SAM"} <= set(resnet_arms)  # repvgg needs k x k convs: resnet-tiny only
    assert vit_arms["expand"]["lr"] == pytest.approx(3e-3 / 3) and vit_arms["SAM"] == {"sam_rho": 0.05}
    labels = [s.label() for s in S.study_settings("resnet-tiny")]
    assert labels[0] == "FP32" and "wanda 70% +BN" in labels and "W4A4 +BN" in labels  # BatchNorm re-estimated
    assert "wanda 70%" in [s.label() for s in S.study_settings("vit-tiny")]
    assert [S.family(s) for s in ("FP32", "wanda 2:4 +BN", "W4A8", "W4A8 +BN")] == ["fp", "pruning", "quantization",
                                                                                 "quantization"]

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        for setting in ("magnitude 50%", "wanda 70%", "W8A8", "W4A4"):
            base = 0.8 + 0.05 * rng.standard_normal()
            for arm, gain in (("Adam", 0.0), ("X", 0.03 if setting.startswith("W") else 0.0)):
                rows.append({"model": "m", "stage": "source", "arm": arm, "seed": seed, "setting": setting,
                             "family": S.family(setting), "accuracy": base + gain + 0.002 * rng.standard_normal()})
    claims = S.claim_table(pd.DataFrame(rows))
    by_family = claims.set_index("family")
    assert by_family.loc["quantization", "verdict"] == "supports" and by_family.loc["quantization", "gains"] == 2
    assert by_family.loc["quantization", "best_gain_pp"] == pytest.approx(3.0, abs=0.5)
    assert by_family.loc["pruning", "verdict"] in ("inconclusive", "partly supports", "contradicts", "mixed")
    assert by_family.loc["pruning", "gains"] + by_family.loc["pruning", "harms"] <= 1  # noise only
    line, exploratory = S.claim_lines(claims, "source")
    assert exploratory.startswith("Exploratory: 2 families")
    assert line.startswith("X -> PARTLY reproduces it (pruning: no, quantization: holds)")
    assert "quantization: supports, significant gain up to +3.1 pp at W4A4 (claimed up to +5.4)" in line


def test_step_times_measures_every_arm(mnist_small):
    from craftlab.studies import snt as S

    arms = {k: v for k, v in S.snt_arms("resnet-tiny").items() if k in ("Adam", "SAM", "repvgg")}
    times = S.step_times("resnet-tiny", arms, mnist_small, reps=2, warmup=1, batch_size=16)
    assert list(times.index) == ["Adam", "SAM", "repvgg"] and (times > 0).all()
