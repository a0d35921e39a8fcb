"""Model factory and checkpoints: zoo, timm names, round trips, refusals, atomic writes."""

import json

import pytest
import torch

import craftlab
from craftlab.checkpoint import CheckpointError


def test_zoo_models_are_timm_classes_with_data_config():
    import timm.models.resnet as R
    import timm.models.vision_transformer as V

    vit = craftlab.create_model("vit-tiny", num_classes=7, pretrained=False)
    res = craftlab.create_model("resnet-tiny", num_classes=7, pretrained=False)
    assert isinstance(vit, V.VisionTransformer) and isinstance(res, R.ResNet)
    x = torch.randn(2, 1, 28, 28)
    assert vit(x).shape == (2, 7) and res(x).shape == (2, 7)
    assert vit.pretrained_cfg["input_size"] == (1, 28, 28)


def test_pretrained_zoo_model_knows_mnist():
    """The shipped/cached foundation weights are loaded (not random): the source-task head reads MNIST."""
    model = craftlab.create_model("resnet-tiny")  # pretrained, MNIST head kept
    assert craftlab.evaluate(model, craftlab.load_data("mnist5k").test)["accuracy"] > 0.9
    fresh_head = craftlab.create_model("resnet-tiny", num_classes=10)
    assert torch.equal(fresh_head.conv1.weight, model.conv1.weight)
    assert not torch.equal(fresh_head.fc.weight, model.fc.weight)


def test_head_init_is_seeded():
    a = craftlab.create_model("vit-tiny", num_classes=3, pretrained=False, seed=1)
    b = craftlab.create_model("vit-tiny", num_classes=3, pretrained=False, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_any_timm_name_without_weights():
    m = craftlab.create_model("resnet10t", num_classes=4, pretrained=False)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_unknown_model_suggests():
    with pytest.raises(ValueError, match="did you mean 'vit-tiny'"):
        craftlab.create_model("vit_tiny")
    with pytest.raises(ValueError, match="num_classes"):
        craftlab.create_model("vit-tiny", num_classes=0)


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
