"""Fine-tuning: determinism, no mutation of the input, history, SAM on/off, pretraining."""

import json

import pytest
import torch

import craftlab


@pytest.fixture(scope="module")
def small(digits):
    # a quarter of digits keeps these tests fast
    x = torch.cat([b[0] for b in digits.loader("train", shuffle=False)])[:300]
    y = torch.cat([b[1] for b in digits.loader("train", shuffle=False)])[:300]
    return craftlab.from_tensors(x, y, val=(x[:100], y[:100]), test=(x[:100], y[:100]), batch_size=50)


def test_finetune_is_deterministic_and_leaves_input_alone(small, unchanged):
    model = craftlab.create_model("resnet-tiny", num_classes=10)
    with unchanged(model):
        a = craftlab.finetune(model, small, epochs=2, seed=5, progress=False)
        b = craftlab.finetune(model, small, epochs=2, seed=5, progress=False)
    for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(p, q)
    assert a.model is not model
    rec = a.history[-1]
    assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time_s"} <= set(rec)
    assert rec["epoch"] == 2 and a.history[0]["train_loss"] > 0
    assert rec["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to zero at the end


def test_sam_changes_only_the_optimizer(small):
    model = craftlab.create_model("vit-tiny", num_classes=10)
    plain = craftlab.finetune(model, small, epochs=1, seed=0, progress=False)
    sam = craftlab.finetune(model, small, epochs=1, seed=0, sam_rho=0.05, progress=False)
    asam = craftlab.finetune(model, small, epochs=1, seed=0, sam_rho=0.5, adaptive=True, progress=False)
    strip = lambda c: {k: v for k, v in c.items() if k not in ("sam_rho", "adaptive")}
    assert strip(plain.config) == strip(sam.config) == strip(asam.config)
    w = lambda r: r.model.blocks[0].attn.qkv.weight
    assert not torch.equal(w(plain), w(sam)) and not torch.equal(w(sam), w(asam))
    assert sam.history[-1]["train_loss"] < 2.5  # it trains


def test_bf16_autocast_runs_on_cpu(small):
    model = craftlab.create_model("vit-tiny", num_classes=10)
    res = craftlab.finetune(model, small, epochs=1, sam_rho=0.05, amp="bf16", progress=False)
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_finetune_bad_input(small):
    model = craftlab.create_model("vit-tiny", num_classes=10, pretrained=False)
    with pytest.raises(ValueError, match="optimizer"):
        craftlab.finetune(model, small, optimizer="adamm")
    with pytest.raises(ValueError, match="sam_rho"):
        craftlab.finetune(model, small, sam_rho=-0.1)
    with pytest.raises(ValueError, match="ASAM"):
        craftlab.finetune(model, small, adaptive=True)
    with pytest.raises(ValueError, match="fp16"):
        craftlab.finetune(model, small, amp="fp16", device="cpu")


def test_pretrain_writes_a_foundation_checkpoint(tmp_path):
    path = craftlab.pretrain("resnet-tiny", epochs=1, out=tmp_path / "zoo", progress=False)
    meta = json.loads((path / "craftlab.json").read_text())
    assert meta["data"]["name"] == "mnist5k" and meta["architecture"] == "resnet-tiny"
    assert meta["metrics"]["test_accuracy"] > 0.15  # one epoch already beats chance (0.10 on 1,000 images)
    with pytest.raises(ValueError, match="zoo model"):
        craftlab.pretrain("resnet18")
