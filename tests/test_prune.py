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


def _top_k_kept(scores, keep):
    """Boolean mask of the `keep` largest entries of each row of a 2-D tensor, by a full sort."""
    order = scores.sort(dim=1, descending=True).indices[:, :keep]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)


def test_row_scope_keeps_the_largest_of_each_output_row():
    model = _net()
    pruned = craftlab.prune(model, 0.5, scope="row")
    for name, m in target_layers(pruned).items():
        rows = m.weight.detach().reshape(m.weight.shape[0], -1)
        orig = dict(model.named_modules())[name].weight.detach().reshape(rows.shape)
        n_keep = rows.shape[1] - round(0.5 * rows.shape[1])
        assert ((rows != 0).sum(1) == n_keep).all(), name
        assert torch.equal(rows != 0, _top_k_kept(orig.abs(), n_keep)), name  # WHICH weights: the top-k per row
        assert torch.equal(rows[rows != 0], orig[rows != 0])  # kept weights are unchanged


@pytest.mark.parametrize("pattern,keep,m", [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8), ("3:4", 3, 4)])
def test_nm_pattern_keeps_n_of_every_m_along_inputs(pattern, keep, m):
    model = _net()
    pruned = craftlab.prune(model, pattern=pattern)
    assert craftlab.sparsity_report(pruned)["overall"] == pytest.approx(1 - keep / m)  # "1:4" is 75 % sparse
    for name, mod in target_layers(pruned).items():
        w = mod.weight.detach()
        orig = dict(model.named_modules())[name].weight.detach()
        if w.ndim == 4:  # groups run along input channels: (O, C, kh, kw) -> (O, kh, kw, C)
            w, orig = w.permute(0, 2, 3, 1), orig.permute(0, 2, 3, 1)
        groups, ogroups = w.reshape(-1, m), orig.reshape(-1, m)
        assert ((groups != 0).sum(1) == keep).all(), name
        # the kept ones are the `keep` largest magnitudes of each group, computed by a sort here
        assert torch.equal(groups != 0, _top_k_kept(ogroups.abs(), keep)), name


def test_nm_pattern_by_hand_on_one_row():
    lin = nn.Sequential(nn.Linear(8, 2), nn.Linear(8, 8), nn.Linear(2, 1))
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, -0.05, 0.4, -2.0]] * 8))
    row = craftlab.prune(lin, pattern="1:4", targets=["1"])[1].weight[0]
    assert row.tolist() == pytest.approx([0, -0.9, 0, 0, 3.0, 0, 0, 0])  # 1 kept of every 4: |-0.9|, |3.0|
    row = craftlab.prune(lin, pattern="2:4", targets=["1"])[1].weight[0]
    assert row.tolist() == pytest.approx([0, -0.9, 0.5, 0, 3.0, 0, 0, -2.0])
    assert torch.equal(craftlab.prune(lin, pattern="zero 3 of 4", targets=["1"])[1].weight,
                       craftlab.prune(lin, pattern="1:4", targets=["1"])[1].weight)


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


class _MLP(nn.Module):
    """Two Linear layers, registered in the reverse of their forward order (fc2 before fc1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc2 = nn.Linear(16, 12)
        self.fc1 = nn.Linear(8, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _row_mask_from_norms(weight, norm, sparsity=0.5):
    """Wanda by hand: per output row, zero the lowest |W_ij| * ||X_j|| (True = zeroed)."""
    score = weight.abs() * norm[None, :]
    n_keep = weight.shape[1] - round(sparsity * weight.shape[1])
    return ~_top_k_kept(score, n_keep)


@pytest.mark.parametrize("wanda_inputs", ["dense", "sequential"])
def test_wanda_inputs_dense_or_sequential(wanda_inputs):
    model = _MLP()
    g = torch.Generator().manual_seed(3)
    calib = [torch.randn(32, 8, generator=g) * torch.linspace(0.1, 3, 8) for _ in range(2)]
    x = torch.cat(calib)
    pruned = craftlab.prune(model, 0.5, method="wanda", calib=calib, targets="all", wanda_inputs=wanda_inputs)
    assert pruned.craftlab_compression["prune"]["wanda_inputs"] == wanda_inputs
    with torch.no_grad():
        # fc1 comes first in the forward pass: its statistics are the raw inputs either way
        fc1_zeroed = _row_mask_from_norms(model.fc1.weight, x.pow(2).sum(0).sqrt())
        assert torch.equal(pruned.fc1.weight == 0, fc1_zeroed)
        h_dense = torch.relu(model.fc1(x))                                  # unpruned layer-1 activations
        h_pruned = torch.relu(x @ pruned.fc1.weight.T + model.fc1.bias)    # layer 1 already pruned
        dense = _row_mask_from_norms(model.fc2.weight, h_dense.pow(2).sum(0).sqrt())
        sequential = _row_mask_from_norms(model.fc2.weight, h_pruned.pow(2).sum(0).sqrt())
    assert not torch.equal(dense, sequential)  # the two statistics disagree on this model
    assert torch.equal(pruned.fc2.weight == 0, sequential if wanda_inputs == "sequential" else dense)


def test_sequential_wanda_input_norms_see_the_pruned_layers():
    model = _MLP()
    calib = [torch.randn(16, 8)]
    pruned = craftlab.prune(model, 0.5, method="wanda", calib=calib, targets="all", wanda_inputs="sequential")
    only_fc1 = craftlab.prune(model, 0.5, method="wanda", calib=calib, targets=["fc1"])
    norms = input_norms(only_fc1, {"fc2": only_fc1.fc2}, calib)["fc2"]
    with torch.no_grad():
        by_hand = torch.relu(calib[0] @ only_fc1.fc1.weight.T + model.fc1.bias).pow(2).sum(0).sqrt()
    torch.testing.assert_close(norms, by_hand)
    assert torch.equal(pruned.fc1.weight, only_fc1.fc1.weight)
    assert torch.equal(pruned.fc2.weight == 0, _row_mask_from_norms(model.fc2.weight, by_hand))


def test_wanda_inputs_bad_values():
    with pytest.raises(ValueError, match="wanda_inputs"):
        craftlab.prune(_net(), 0.5, method="wanda", calib=_calib(), wanda_inputs="pruned")
    with pytest.raises(ValueError, match="method='wanda'"):
        craftlab.prune(_net(), 0.5, wanda_inputs="sequential")
    with pytest.raises(ValueError, match="scope='layer' or 'row'"):
        craftlab.prune(_net(), 0.5, method="wanda", scope="global", calib=_calib(), wanda_inputs="sequential")


def test_sequential_wanda_on_a_cnn_with_patterns():
    model, calib = _net(), _calib()
    for kw in ({"sparsity": 0.5, "scope": "layer"}, {"pattern": "2:4"}):
        p = craftlab.prune(model, method="wanda", calib=calib, wanda_inputs="sequential", **kw)
        assert craftlab.sparsity_report(p)["overall"] == pytest.approx(0.5, abs=0.01)


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
    # layer '2' has 8 input channels: groups of 5 do not fit; the message repeats the pattern as given
    with pytest.raises(ValueError, match=r"impossible N:M pattern 3:5 for layer '2'.* 8 is not a multiple of M=5"):
        craftlab.prune(_net(), pattern="3:5")
    with pytest.raises(ValueError, match=r"impossible N:M pattern 1:3 for layer '2'"):
        craftlab.prune(_net(), pattern="keep 1 of 3")


def test_wanda_needs_non_empty_calibration():
    with pytest.raises(ValueError, match="calib"):
        craftlab.prune(_net(), 0.5, method="wanda")
    with pytest.raises(ValueError, match="calibration set is empty"):
        craftlab.prune(_net(), 0.5, method="wanda", calib=[])


def test_unknown_method_suggests():
    with pytest.raises(ValueError, match="did you mean 'wanda'"):
        craftlab.prune(_net(), 0.5, method="wandaa")
