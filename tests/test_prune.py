"""Pruning: exact sparsity, which weights are kept, N:M groups, Wanda scores, and bad input."""

import pytest
import torch
from torch import nn

import craftlab
from craftlab.compression.prune import input_norms, target_layers


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),      # stem (excluded by default)
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32), nn.ReLU(),
        nn.Linear(32, 5),                              # head (excluded by default)
    )


def _calib(n=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(10, 1, 6, 6, generator=g), torch.zeros(10, dtype=torch.long)) for _ in range(n // 10)]


def _zeros(model, names):
    mods = dict(model.named_modules())
    return sum(int((mods[n].weight == 0).sum()) for n in names)


def test_default_targets_skip_stem_and_head():
    assert list(target_layers(_net())) == ["2", "4", "7"]
    vit = craftlab.create_model("vit-tiny", pretrained=False)
    names = list(target_layers(vit))
    assert "patch_embed.proj" not in names and "head" not in names
    assert "blocks.0.attn.qkv" in names and "blocks.3.mlp.fc2" in names


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.9, 0.999])
def test_global_magnitude_is_exact_and_keeps_the_largest(sparsity):
    model = _net()
    pruned = craftlab.prune(model, sparsity)
    layers = target_layers(model)
    weights = torch.cat([m.weight.detach().abs().reshape(-1) for m in layers.values()])
    k = round(sparsity * weights.numel())
    assert _zeros(pruned, layers) == k
    kept = torch.cat([m.weight.detach().reshape(-1) for m in target_layers(pruned).values()]) != 0
    if 0 < k < weights.numel():
        assert weights[kept].min() >= weights[~kept].max()  # every kept weight beats every pruned one
    report = craftlab.sparsity_report(pruned)
    assert report["overall"] == pytest.approx(k / weights.numel())
    # stem and head untouched
    assert torch.equal(pruned[0].weight, model[0].weight) and torch.equal(pruned[9].weight, model[9].weight)


def test_input_model_is_not_changed(unchanged):
    model = _net()
    with unchanged(model):
        craftlab.prune(model, 0.6, method="wanda", calib=_calib())
        craftlab.prune(model, 0.6)


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_layer_scope_exact_per_layer(method):
    pruned = craftlab.prune(_net(), 0.3, method=method, scope="layer", seed=3)
    for name, m in target_layers(pruned).items():
        assert int((m.weight == 0).sum()) == round(0.3 * m.weight.numel()), name


def test_row_scope_exact_per_output_row():
    pruned = craftlab.prune(_net(), 0.5, scope="row")
    for m in target_layers(pruned).values():
        rows = m.weight.reshape(m.weight.shape[0], -1)
        assert ((rows == 0).sum(1) == round(0.5 * rows.shape[1])).all()


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_nm_pattern_zeroes_n_of_every_m_along_inputs(pattern, n, m):
    model = _net()
    pruned = craftlab.prune(model, pattern=pattern)
    for name, mod in target_layers(pruned).items():
        w = mod.weight.detach()
        orig = dict(model.named_modules())[name].weight.detach()
        if w.ndim == 4:  # group along input channels
            w, orig = w.permute(0, 2, 3, 1), orig.permute(0, 2, 3, 1)
        groups, ogroups = w.reshape(-1, m), orig.reshape(-1, m)
        assert ((groups == 0).sum(1) == n).all(), name
        # the zeroed ones are the n smallest magnitudes of the group
        kept_min = torch.where(groups != 0, ogroups.abs(), torch.inf).min(1).values
        pruned_max = torch.where(groups == 0, ogroups.abs(), -torch.inf).max(1).values
        assert (kept_min >= pruned_max).all()


def test_wanda_score_is_weight_times_input_norm():
    model, calib = _net(), _calib()
    layers = target_layers(model)
    norms = input_norms(model, layers, calib)
    # the Linear layer's input is the flattened conv output: check ||X_j|| by hand
    feats = torch.cat([model[:7](x) for x, _ in calib])
    torch.testing.assert_close(norms["7"], feats.pow(2).sum(0).sqrt())
    pruned = craftlab.prune(model, 0.5, method="wanda", calib=calib)
    lin, plin = model[7].weight.detach(), pruned[7].weight.detach()
    score = lin.abs() * norms["7"][None, :]
    for r in range(lin.shape[0]):  # per output row, the lower-scored half is zeroed
        zeroed = plin[r] == 0
        assert int(zeroed.sum()) == lin.shape[1] // 2
        assert score[r][~zeroed].min() >= score[r][zeroed].max()
    # different from magnitude pruning with the same budget: the activations matter
    assert not torch.equal(plin == 0, craftlab.prune(model, 0.5, scope="row")[7].weight == 0)


def test_wanda_on_a_timm_model(digits):
    vit = craftlab.create_model("vit-tiny", num_classes=10)
    pruned = craftlab.prune(vit, pattern="2:4", method="wanda", calib=digits.calib)
    assert craftlab.sparsity_report(pruned)["overall"] == pytest.approx(0.5)
    res = craftlab.create_model("resnet-tiny", num_classes=10)
    pruned = craftlab.prune(res, 0.5, method="wanda", calib=digits.calib)
    assert craftlab.sparsity_report(pruned)["overall"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "half", None])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        craftlab.prune(_net(), bad)


@pytest.mark.parametrize("pattern", ["4:2", "2:2", "0:4", "24", "a:b"])
def test_impossible_patterns(pattern):
    with pytest.raises(ValueError, match="N:M|pattern"):
        craftlab.prune(_net(), pattern=pattern)


def test_pattern_that_does_not_divide_a_layer():
    with pytest.raises(ValueError, match=r"impossible N:M pattern 3:5 for layer '2'"):
        craftlab.prune(_net(), pattern="3:5")


def test_wanda_needs_non_empty_calibration():
    with pytest.raises(ValueError, match="calib"):
        craftlab.prune(_net(), 0.5, method="wanda")
    with pytest.raises(ValueError, match="calibration set is empty"):
        craftlab.prune(_net(), 0.5, method="wanda", calib=[])


def test_unknown_method_suggests():
    with pytest.raises(ValueError, match="did you mean 'wanda'"):
        craftlab.prune(_net(), 0.5, method="wandaa")
