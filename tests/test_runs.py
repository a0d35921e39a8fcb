"""Run specs: keys that tell apart every run that trains differently, arm labels, twins; the run cache."""

import json
from dataclasses import asdict, fields, replace

import pytest

import craftlab.train.finetune as ft
from craftlab.train.runs import RunSpec, arm_label, get_run, list_runs, run_dir

BASE = RunSpec()
# one other value per field: each changes what finetune does
CHANGED = {"model": "resnet-tiny", "data": "mnist5k", "optimizer": "sgd", "lr": 3e-4, "epochs": 3, "sam_rho": 0.05,
           "adaptive": True, "seed": 1, "batch_size": 32, "sam_mode": "looksam:5", "amp": "bf16"}


def test_every_field_is_in_the_key():
    assert set(CHANGED) == {f.name for f in fields(RunSpec)}  # a new field must be added here (and to the key)
    for name, value in CHANGED.items():
        base = replace(BASE, sam_rho=0.5) if name in ("adaptive", "sam_mode") else BASE
        assert replace(base, **{name: value}).key != base.key, name


@pytest.mark.parametrize("a,b", [
    ({"lr": 1e-3}, {"lr": 1.0000001e-3}),  # ':g' alone prints both as 0.001
    ({"sam_rho": 0.05}, {"sam_rho": 0.05000001}),
    ({"data": "imagefolder:/x/a_b"}, {"data": "imagefolder:/x/a/b"}),  # same text once '/' is replaced
    ({"data": "imagefolder:/x/a b"}, {"data": "imagefolder:/x/a_b"}),
])
def test_keys_of_different_runs_never_collide(a, b):
    ka, kb = RunSpec(**a).key, RunSpec(**b).key
    assert ka != kb
    assert "/" not in ka + kb and ":" not in ka + kb and " " not in ka + kb  # one folder name each


def test_keys_of_existing_runs_are_stable():
    """Caches made before keep their names."""
    assert BASE.key == "vit-tiny-digits-adamw-e8-s0"
    assert RunSpec(sam_rho=0.05).key == "vit-tiny-digits-adamw+sam0.05-e8-s0"
    assert RunSpec(model="resnet-tiny", sam_rho=1.0, adaptive=True, lr=3e-4, seed=2).key == \
        "resnet-tiny-digits-adamw+asam1-lr0.0003-e8-s2"
    assert RunSpec(optimizer="sgd", sam_rho=0.05, epochs=3).arm == "sgd+sam0.05"
    assert RunSpec(batch_size=32).key == "vit-tiny-digits-adamw-b32-e8-s0"  # only a non-default batch size shows


@pytest.mark.parametrize("spec,label", [
    (RunSpec(), "AdamW"),
    (RunSpec(sam_rho=0.05), "SAM ρ=0.05"),
    (RunSpec(sam_rho=0.5, adaptive=True), "ASAM ρ=0.5"),
    (RunSpec(optimizer="sgd"), "SGD"),
    (RunSpec(optimizer="sgd", sam_rho=0.05), "SGD+SAM ρ=0.05"),
    (RunSpec(optimizer="sgd", sam_rho=2.0, adaptive=True), "SGD+ASAM ρ=2"),
])
def test_arm_labels(spec, label):
    assert spec.label == arm_label(spec) == label


def test_twins():
    plain = RunSpec(model="resnet-tiny", lr=3e-4, epochs=3, seed=4)
    sam = plain.twin(0.05)
    assert sam == replace(plain, sam_rho=0.05) and sam.twin() == plain and sam.twin(0.5) == plain
    asam = plain.twin(0.5, adaptive=True)
    assert asam == replace(plain, sam_rho=0.5, adaptive=True) and asam.twin() == plain
    assert {k: v for k, v in asdict(asam).items() if k not in ("sam_rho", "adaptive")} == \
        {k: v for k, v in asdict(plain).items() if k not in ("sam_rho", "adaptive")}
    with pytest.raises(ValueError, match="sam_rho > 0"):
        plain.twin(0.0)


def test_get_run_trains_once_and_rebuilds_a_folder_of_another_run(monkeypatch):
    spec = RunSpec(model="resnet-tiny", epochs=1, seed=7)
    path = get_run(spec, progress=False)
    assert path == run_dir(spec)
    meta = json.loads((path / "craftlab.json").read_text())
    assert meta["run"] == {k: v for k, v in asdict(spec).items()
                           if k not in ("batch_size", "sam_mode", "amp")}  # as recorded before the fields
    assert meta["arm"] == "adamw" and meta["label"] == "AdamW"
    assert 0 <= meta["metrics"]["test_accuracy"] <= 1
    assert any(r["key"] == spec.key for r in list_runs())

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(ft, "finetune", no_training)
    assert get_run(spec, progress=False) == path  # cached
    (path / "craftlab.json").write_text(json.dumps({**meta, "run": {**meta["run"], "lr": 0.1}}))
    with pytest.raises(AssertionError, match="trained again"):  # holds another run: not reused
        get_run(spec, progress=False)


@pytest.mark.parametrize("kw,match", [
    (dict(epochs=0), "epochs must be a whole number >= 1"), (dict(epochs=2.5), "epochs"),
    (dict(seed=-1), "seed must be a whole number >= 0"), (dict(batch_size=0), "batch_size"),
    (dict(sam_rho=-0.1), "sam_rho must be a finite number >= 0"), (dict(sam_rho=float("nan")), "sam_rho"),
    (dict(adaptive=True), "ASAM .* needs sam_rho > 0"), (dict(lr=0.0), "lr must be a positive number"),
    (dict(optimizer="adamx"), "unknown optimizer 'adamx'"), (dict(model=""), "model must be a model name"),
])
def test_a_runspec_checks_its_fields(kw, match):
    """The core refuses a run that cannot train (it used to accept epochs=0: only the app checked)."""
    with pytest.raises(ValueError, match=match):
        RunSpec(**{"model": "vit-tiny", **kw})


def test_find_run_and_the_unknown_model_error_read_the_run_cache():
    """A cached run is found by its key (a damaged sidecar too: reading it names the damage); a name that is no
    zoo name, run key or timm name is refused with the closest run keys and zoo names suggested."""
    from craftlab import cache
    from craftlab.checkpoint import CheckpointError, read_meta
    from craftlab.train.runs import find_run, unknown_model

    good, bad = cache.home() / "runs" / "zz-my-vit-run", cache.home() / "runs" / "zz-my-damaged-run"
    for path in (good, bad):
        path.mkdir(parents=True, exist_ok=True)
    (good / "craftlab.json").write_text(json.dumps({"format": "craftlab-checkpoint", "architecture": "vit-tiny"}))
    (bad / "craftlab.json").write_text("{not json")
    try:
        assert find_run("zz-my-vit-run") == good and find_run(" zz-my-damaged-run ") == bad
        assert find_run("zz-no-such-run") is None and find_run("../runs") is None and find_run("") is None
        with pytest.raises(CheckpointError, match="damaged"):
            read_meta(find_run("zz-my-damaged-run"))
        msg = str(unknown_model("zz-my-vit-rnu"))
        assert "unknown model 'zz-my-vit-rnu'" in msg and "'zz-my-vit-run'" in msg  # a readable run is suggested
        assert "'zz-my-damaged-run'" not in str(unknown_model("zz-my-damaged-rnu"))  # list_runs skips it
        assert "'vit-tiny'" in str(unknown_model("vit-tiyn")) and "a timm model name" in msg
    finally:
        for path in (good, bad):
            (path / "craftlab.json").unlink()
            path.rmdir()
