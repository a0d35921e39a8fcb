"""Per-subnet BatchNorm of a CNN supernet (OFA-style re-estimation on the calibration images) and the selection rule
that keeps the uniform subnet unless a mixed one is clearly better."""

import pytest
import torch
from torch import nn

import craftlab
from craftlab.compression.bn import batchnorm_layers
from craftlab.supernet.build import build_supernet
from craftlab.supernet.search import evaluate_configs, evolutionary_search, is_uniform, select, standard_error
from craftlab.supernet.space import SubnetConfig
from craftlab.supernet.train import train_supernet
from craftlab.train.finetune import eval_loader


@pytest.fixture(scope="module")
def resnet(digits):
    data = craftlab.load_data("digits", model=craftlab.build_model("resnet-tiny"))
    model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    base = craftlab.finetune(model, data, epochs=6, seed=0, progress=False).model
    sn = build_supernet(base, data.calib, lora=None, w_bits=(2, 4, 8), a_bits=(4, 8))
    sn = train_supernet(sn, data, epochs=3, max_steps=30, evaluate_every_epoch=False, measure_memory=False).supernet
    return data, base, sn


def test_exported_cnn_subnets_with_per_subnet_bn_score_like_plain_ptq(resnet):
    data, base, sn = resnet
    test = eval_loader(data, "test")
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    for w, a in ((8, 8), (4, 8)):
        cfg = sn.space.uniform(w, a)
        ptq = craftlab.evaluate(craftlab.quantize(base, w_bits=w, a_bits=a, calib=data.calib), test)["accuracy"]
        shared = craftlab.evaluate(sn.export(cfg), test)["accuracy"]
        own = craftlab.evaluate(sn.export(cfg, bn_calib=data.calib), test)["accuracy"]
        # the shared statistics of every subnet's train-mode forwards break it; its own statistics fix it
        assert own >= ptq - 0.01, (w, a, own, ptq)
        assert own > shared + 0.05, (w, a, own, shared)
        # what the search scores is what the exported subnet computes
        assert evaluate_configs(sn, data, [cfg], split="test")[0]["accuracy"] == own
        assert evaluate_configs(sn, data, [cfg], split="test", bn="shared")[0]["accuracy"] == shared
    after = sn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shared statistics are put back


def test_subnet_bn_equals_the_compression_recalibration_of_the_exported_model(resnet):
    data, _, sn = resnet
    cfg = sn.space.uniform(4, 4)
    own = sn.export(cfg, bn_calib=data.calib)
    plain = craftlab.recalibrate_bn(sn.export(cfg), data.calib)
    for (n, a), (_, b) in zip(batchnorm_layers(own).items(), batchnorm_layers(plain).items()):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6) and torch.allclose(
            a.running_var, b.running_var, rtol=1e-5, atol=1e-6), n


def _points(space, accs):
    return [{"label": space.label(c), "config": c, "accuracy": acc, "bitops": bo} for c, acc, bo in accs]


def test_selection_keeps_the_uniform_subnet_unless_a_mixed_one_is_clearly_better():
    sn = build_supernet(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
                        [torch.randn(8, 1, 2, 2)], targets="all", lora=None, w_bits=(4, 8), a_bits=(8,),
                        input_size=(1, 2, 2))
    space = sn.space
    uni, mixed = space.uniform(4, 8), SubnetConfig((8, 4), (8, 8), resolution=2)
    assert is_uniform(space, uni) and not is_uniform(space, mixed)
    n = 400
    se = standard_error(0.90, 0.90, n)
    close = _points(space, [(uni, 0.90, 100), (mixed, 0.90 + 1.5 * se, 90)])
    pick, why, est = select(close, 200, n, space)
    assert pick["config"] == uni and "uniform kept" in why and est is None  # no per-image data: binomial SE
    far = _points(space, [(uni, 0.90, 100), (mixed, 0.90 + 3 * se, 90)])
    assert select(far, 200, n, space)[0]["config"] == mixed
    assert select(close, 200, n, space, margin_se=0)[0]["config"] == mixed  # the old rule: the top accuracy
    assert select(_points(space, [(uni, 0.0, 100), (mixed, 1.0, 90)]), 200, n, space)[0]["config"] == mixed
    assert select(close, 95, n, space)[0]["config"] == mixed  # the uniform subnet does not fit: nothing to keep


def test_search_keeps_uniform_when_mixed_subnets_are_indistinguishable(small):
    """An untrained model scored on 60 images: the subnets differ by a few images (noise), the most accurate one
    is mixed-precision, and the rule keeps the best uniform subnet instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    sn = build_supernet(model, small.calib, targets=["1", "3", "5"], lora=None, w_bits=(2, 3, 4, 8), a_bits=(4, 8),
                        input_size=(1, 28, 28))
    budget = sn.bitops(sn.space.uniform(8, 8))
    res = evolutionary_search(sn, small, budget, population=12, generations=3, cache=False)
    assert not is_uniform(sn.space, res.top["config"])  # the raw winner is mixed ...
    assert is_uniform(sn.space, res.best["config"]) and "uniform kept" in res.rule  # ... and is not reported
    gain = res.top["accuracy"] - res.best["accuracy"]
    assert gain > 0 and res.estimate is not None and res.estimate["gain"] <= 2 * res.estimate["se"]
    assert evolutionary_search(sn, small, budget, population=12, generations=3, cache=False,
                               margin_se=0).best["config"] == res.top["config"]


def test_ptq_baselines_count_their_float_attention_like_the_supernet_counts_its_quantized_one(small):
    from timm.models.vision_transformer import VisionTransformer

    from craftlab.studies import supernet as study

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                            num_heads=2, mlp_ratio=2.0).eval()
    sn = build_supernet(vit, small.calib, lora=None, w_bits=(4, 8), a_bits=(8,), input_size=(1, 28, 28))
    rows = {r["label"]: r for r in study.ptq_baselines(vit, small, settings=("W8A8",))}
    n, hd = (28 // 7) ** 2 + 1, 8
    attn = 2 * (2 * 2 * n * n * hd)  # two blocks, q·kᵀ + attn·v of 2 heads
    assert rows["FP32"]["macs_attention"] == attn == sn.cost(sn.space.largest())["macs_attention"]
    assert rows["FP32"]["bitops"] == sn.references()["FP32"]
    cost = sn.cost(sn.space.uniform(8, 8))
    assert rows["W8A8"]["bitops_conv_linear"] == cost["bitops"] - cost["bitops_attention"]
    assert rows["W8A8"]["bitops"] == rows["W8A8"]["bitops_conv_linear"] + attn * 32 * 32
