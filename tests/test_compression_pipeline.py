"""The prune -> BatchNorm re-estimation -> quantize pipeline: BN statistics, settings, validation."""

import pytest
import torch
from torch import nn

import craftlab
from craftlab.compression.bn import recalibrate_bn
from craftlab.compression.pipeline import compress, compress_and_evaluate
from craftlab.settings import make_setting


def _bn_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.Dropout(0.5), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 3),
    )
    with torch.no_grad():  # stale statistics, as after training on other weights
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return net.eval()


def _calib(sizes=(10, 10, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 6, 6, generator=g) * 2 + 1, torch.zeros(n, dtype=torch.long)) for n in sizes]


def _bn_inputs_by_hand(model, calib):
    """Each BatchNorm's input over all calibration images: BN layers normalising by batch statistics
    (train mode), dropout off."""
    model = _copy(model)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    seen = {n: [] for n in bns}
    hooks = [m.register_forward_pre_hook(lambda _m, i, n=n: seen[n].append(i[0].detach())) for n, m in bns.items()]
    for m in bns.values():
        m.train()
    with torch.no_grad():
        for x, _ in calib:
            model(x)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_recalibrated_statistics_are_those_of_the_calibration_set():
    model, calib = _bn_net(), _calib()
    out = recalibrate_bn(model, calib)
    inputs = _bn_inputs_by_hand(model, calib)
    mods = dict(out.named_modules())
    for name, x in inputs.items():
        dims = [0, 2, 3] if x.ndim == 4 else [0]
        bn = mods[name]
        torch.testing.assert_close(bn.running_mean, x.mean(dims), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, x.var(dims, unbiased=True), rtol=1e-5, atol=1e-6)  # unbiased
        assert bn.momentum == 0.1 and not bn.training
    assert [m.training for m in out.modules()] == [m.training for m in model.modules()]


def test_recalibration_leaves_the_input_model_unchanged(unchanged):
    model, calib = _bn_net(), _calib()
    model.train()  # a model in train mode stays in train mode; its copy too
    with unchanged(model):
        out = recalibrate_bn(model, calib)
        craftlab.prune(model, 0.5, scope="layer", recalibrate_bn=True, calib=calib)
        compress(model, sparsity=0.5, scope="layer", recalibrate_bn=True, calib=calib, w_bits=8)
    assert out.training and out[1].training


def test_model_without_batchnorm_is_returned_equal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    out = recalibrate_bn(model, [torch.randn(5, 4)])
    assert out is not model
    assert out.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in out.state_dict().items())


def test_recalibration_needs_calibration_images():
    with pytest.raises(ValueError, match="calib"):
        recalibrate_bn(_bn_net(), None)
    with pytest.raises(ValueError, match="calibration set is empty"):
        recalibrate_bn(_bn_net(), [])
    with pytest.raises(ValueError, match="recalibrate_bn=True needs calibration data"):
        craftlab.prune(_bn_net(), 0.5, recalibrate_bn=True)
    with pytest.raises(ValueError, match="recalibrate_bn=True needs calibration data"):
        compress(_bn_net(), sparsity=0.5, recalibrate_bn=True)


def test_pipeline_order_prune_then_bn_then_quantize():
    model, calib = _bn_net(), _calib()
    got = compress(model, method="magnitude", sparsity=0.5, scope="layer", recalibrate_bn=True, w_bits=4, a_bits=8,
                   calib=calib)
    pruned = craftlab.prune(model, 0.5, scope="layer")
    want = craftlab.quantize(recalibrate_bn(pruned, calib), w_bits=4, a_bits=8, calib=calib)
    assert got.state_dict().keys() == want.state_dict().keys()
    for k, v in want.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v, msg=k)
    assert got.craftlab_compression["prune"]["recalibrate_bn"] is True


@pytest.fixture(scope="module")
def mnist_resnet():
    return craftlab.create_model("resnet-tiny"), craftlab.load_data("mnist5k")  # pretrained on mnist5k, its head


@pytest.mark.parametrize("setting", ["magnitude", "wanda", "2:4"])
def test_bn_recalibration_rescues_a_pruned_resnet(mnist_resnet, setting):
    """Measured (mnist5k test, 1000 images, fp 0.961): 50 % layer-scope magnitude 0.100 -> 0.939,
    Wanda 0.100 -> 0.941, magnitude 2:4 0.100 -> 0.920."""
    model, data = mnist_resnet
    kw = {"pattern": "2:4"} if setting == "2:4" else {"method": setting, "sparsity": 0.5, "scope": "layer"}
    stale = craftlab.evaluate(compress(model, calib=data.calib, **kw), data.test)["accuracy"]
    fixed = craftlab.evaluate(compress(model, calib=data.calib, recalibrate_bn=True, **kw), data.test)["accuracy"]
    assert fixed > 0.8
    assert fixed - stale > 0.5


def test_setting_or_keywords_give_the_same_model():
    model, calib = _bn_net(), _calib()
    s = make_setting("wanda", 0.5, w_bits=4, a_bits=8, recalibrate_bn=True)
    by_setting = compress(model, setting=s, calib=calib)
    by_kwargs = compress(model, calib=calib, **s.compress_kwargs())
    by_label = compress(model, setting="wanda 50% +BN + W4A8", calib=calib)
    for other in (by_kwargs, by_label):
        for k, v in by_setting.state_dict().items():
            assert torch.equal(other.state_dict()[k], v), k
    assert by_setting.craftlab_compression["prune"]["recalibrate_bn"] is True
    nm = compress(model, setting=make_setting("2:4", nm_score="wanda"), calib=calib)
    assert craftlab.sparsity_report(nm)["overall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="either setting= or sparsity"):
        compress(model, setting=s, sparsity=0.3, calib=calib)


@pytest.mark.parametrize("bad,match", [
    ({"sparsity": 1.5}, "sparsity"), ({"w_bits": 9}, "w_bits"), ({"method": "wandaa", "sparsity": 0.5}, "wanda"),
    ({"pattern": "5:4"}, "N:M"), ({"pattern": "2:4", "sparsity": 0.7}, "contradicts"),
    ({"quant_method": "kl", "w_bits": 8}, "method"), ({"a_granularity": "row", "a_bits": 8}, "a_granularity"),
    ({"method": "wanda", "sparsity": 0.5, "calib": None}, "calib"), ({"a_bits": 8, "calib": None}, "calib"),
    ({"wanda_inputs": "sequential", "sparsity": 0.5}, "wanda"), ({"scope": "block", "sparsity": 0.5}, "scope"),
])
def test_settings_are_validated_before_any_work(monkeypatch, bad, match):
    import craftlab.compression.pipeline as pipeline

    def fail(*_a, **_k):
        raise AssertionError("worked before validating")

    for name in ("evaluate", "prune", "quantize"):
        monkeypatch.setattr(pipeline, name, fail)
    data = craftlab.from_tensors(torch.randn(40, 1, 6, 6), torch.arange(40) % 2)
    with pytest.raises(ValueError, match=match):
        compress_and_evaluate(_bn_net(), data, **bad)
    with pytest.raises(ValueError, match=match):
        compress(_bn_net(), **{"calib": data.calib, **bad})


def test_compress_and_evaluate_with_a_setting():
    torch.manual_seed(0)
    data = craftlab.from_tensors(torch.randn(60, 1, 6, 6), torch.arange(60) % 3)
    model = _bn_net()
    s = make_setting("magnitude", 0.5, w_bits=8, recalibrate_bn=True)
    res = compress_and_evaluate(model, data, setting=s)
    ref = compress_and_evaluate(model, data, **s.compress_kwargs())
    assert res["setting"] == s.label() and res["recalibrate_bn"] is True
    for k in ("accuracy", "loss", "fp_accuracy", "sparsity_measured", "size_mb", "bitops"):
        assert res[k] == ref[k], k
    plain = compress_and_evaluate(model, data, method="magnitude", sparsity=0.5)  # plain keywords still work
    assert plain["sparsity"] == 0.5 and "setting" not in plain
