"""Checkpoints: round trips, refusals, atomic writes, the weights hash that catches an interrupted overwrite."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import craftlab
from craftlab.checkpoint import SIDECAR, WEIGHTS, CheckpointError

ZOO_DIR = Path(craftlab.__file__).parent / "zoo"


class Killed(BaseException):
    """The process dying mid-save (like KeyboardInterrupt, not an Exception)."""


def test_checkpoint_round_trip(tmp_path):
    model = craftlab.create_model("vit-tiny", num_classes=5, pretrained=False, seed=3)
    path = craftlab.save_checkpoint(model, tmp_path / "ck", {"optimizer": "adamw", "sam_rho": 0.05, "seed": 3,
                                                             "metrics": {"test_accuracy": 0.5}})
    assert sorted(p.name for p in path.iterdir()) == ["craftlab.json", "model.safetensors"]  # no temp files left
    meta = json.loads((path / "craftlab.json").read_text())
    assert meta["architecture"] == "vit-tiny" and meta["num_classes"] == 5 and meta["sam_rho"] == 0.05
    loaded = craftlab.load_checkpoint(path)
    for (n, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), n
    assert loaded.craftlab_meta["metrics"]["test_accuracy"] == 0.5


def test_checkpoint_refuses_another_architecture(tmp_path):
    model = craftlab.create_model("resnet-tiny", num_classes=10, pretrained=False)
    path = craftlab.save_checkpoint(model, tmp_path / "ck")
    with pytest.raises(CheckpointError, match="holds a 'resnet-tiny' model, not 'vit-tiny'"):
        craftlab.load_checkpoint(path, expected_architecture="vit-tiny")
    with pytest.raises(CheckpointError, match="not 'vit-tiny'"):
        craftlab.load_checkpoint(path, model=craftlab.create_model("vit-tiny", pretrained=False))
    # a sidecar that lies about the architecture: the weights do not fit
    meta = json.loads((path / "craftlab.json").read_text())
    (path / "craftlab.json").write_text(json.dumps({**meta, "architecture": "vit-tiny"}))
    with pytest.raises(CheckpointError, match="does not fit a 'vit-tiny' model"):
        craftlab.load_checkpoint(path)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    model = craftlab.create_model("resnet-tiny", num_classes=10, pretrained=False)
    path = craftlab.save_checkpoint(model, tmp_path / "ck")
    (path / "model.safetensors").write_bytes(b"\x80\x04not safetensors, maybe a pickle")
    with pytest.raises(CheckpointError, match="damaged"):
        craftlab.load_checkpoint(path)
    (path / "craftlab.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="damaged"):
        craftlab.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a craftlab checkpoint"):
        craftlab.load_checkpoint(tmp_path / "nothing-here")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = craftlab.create_model("resnet-tiny", num_classes=10, pretrained=False, seed=0)
    path = craftlab.save_checkpoint(model, tmp_path / "ck")
    other = craftlab.create_model("resnet-tiny", num_classes=10, pretrained=False, seed=1)
    import craftlab.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        craftlab.save_checkpoint(other, path)
    assert sorted(p.name for p in path.iterdir()) == ["craftlab.json", "model.safetensors"]
    loaded = craftlab.load_checkpoint(path)
    assert torch.equal(loaded.conv1.weight, model.conv1.weight)


def _resnet(seed):
    return craftlab.create_model("resnet-tiny", num_classes=10, pretrained=False, seed=seed)


def test_sidecar_records_the_weights_hash(tmp_path):
    path = craftlab.save_checkpoint(_resnet(0), tmp_path / "ck")
    meta = json.loads((path / SIDECAR).read_text())
    assert meta["weights_sha256"] == hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()


def test_overwrite_interrupted_between_the_two_files_is_refused(tmp_path, monkeypatch):
    """A save killed after the new weights replaced the old ones but before the new sidecar did leaves the
    new weights under the old sidecar (another run's metadata and metrics): loading must refuse that."""
    first, second = _resnet(0), _resnet(1)
    path = craftlab.save_checkpoint(first, tmp_path / "ck", {"metrics": {"test_accuracy": 0.1}})
    real_replace = os.replace

    def killed_before_the_sidecar(src, dst, *a, **k):
        if Path(dst).name == SIDECAR:
            raise Killed
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", killed_before_the_sidecar)
    with pytest.raises(Killed):
        craftlab.save_checkpoint(second, path, {"metrics": {"test_accuracy": 0.9}})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads((path / SIDECAR).read_text())["metrics"]["test_accuracy"] == 0.1  # the old sidecar ...
    with pytest.raises(CheckpointError, match="do not match their sidecar"):  # ... over the new weights
        craftlab.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="do not match"):
        craftlab.create_model("resnet-tiny", pretrained=path)
    craftlab.save_checkpoint(second, path, {"metrics": {"test_accuracy": 0.9}})  # a clean overwrite loads
    loaded = craftlab.load_checkpoint(path)
    assert torch.equal(loaded.conv1.weight, second.conv1.weight)
    assert loaded.craftlab_meta["metrics"]["test_accuracy"] == 0.9
    assert sorted(p.name for p in path.iterdir()) == [SIDECAR, WEIGHTS]


def test_sidecar_without_the_hash_still_loads(tmp_path):
    model = _resnet(2)
    path = craftlab.save_checkpoint(model, tmp_path / "ck")
    meta = json.loads((path / SIDECAR).read_text())
    del meta["weights_sha256"]  # as written by craftlab before the hash
    (path / SIDECAR).write_text(json.dumps(meta))
    assert torch.equal(craftlab.load_checkpoint(path).conv1.weight, model.conv1.weight)


@pytest.mark.parametrize("name", ["vit-tiny", "resnet-tiny"])
def test_shipped_zoo_sidecars_match_their_weights(name):
    meta = json.loads((ZOO_DIR / name / SIDECAR).read_text())
    assert meta["weights_sha256"] == hashlib.sha256((ZOO_DIR / name / WEIGHTS).read_bytes()).hexdigest()
    craftlab.load_checkpoint(ZOO_DIR / name, expected_architecture=name)
