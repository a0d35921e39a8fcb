"""Quantization: grid levels, error bounds, torch's reference op, models, stats and bad input."""

import pytest
import torch
from torch import nn

import craftlab
from craftlab.compression.quant import QuantConv2d, QuantLinear, grid, qparams, quantize_tensor


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_matches_torch_fake_quantize(bits, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(16, 8, 3, 3) * torch.rand(16, 1, 1, 1) * 3
    scale, zp = qparams(w, bits, axis=0, symmetric=symmetric)
    qmin, qmax = grid(bits, symmetric)
    ref = torch.fake_quantize_per_channel_affine(w, scale.reshape(-1), zp.reshape(-1).int(), 0, qmin, qmax)
    ours = quantize_tensor(w, bits, axis=0, symmetric=symmetric)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", [2, 4, 6, 8, 16])
def test_levels_and_error_bound_per_channel(bits):
    torch.manual_seed(0)
    w = torch.randn(12, 40)
    q = quantize_tensor(w, bits, axis=0)
    scale, _ = qparams(w, bits, axis=0)
    for c in range(12):
        assert q[c].unique().numel() <= 2**bits
        # minmax range covers every value: rounding error at most half a step
        assert (q[c] - w[c]).abs().max() <= scale[c].item() / 2 + 1e-6
    assert q.shape == w.shape and q.dtype == w.dtype


def test_per_tensor_and_asymmetric_grid():
    x = torch.rand(1000) * 5 + 1  # all positive
    q = quantize_tensor(x, 4, symmetric=False)
    assert q.unique().numel() <= 16
    scale, zp = qparams(x, 4, symmetric=False)
    # range widened to include zero: 0 is exactly representable
    assert quantize_tensor(torch.tensor([0.0, 6.0]), 4, symmetric=False)[0] == 0
    assert (q - x).abs().max() <= scale / 2 + 1e-6


def test_percentile_and_mse_beat_minmax_with_an_outlier():
    torch.manual_seed(0)
    x = torch.randn(20000)
    x[0] = 80.0
    err = {m: (quantize_tensor(x, 4, method=m) - x)[1:].pow(2).mean() for m in ("minmax", "percentile", "mse")}
    assert err["percentile"] < err["minmax"] / 10
    assert err["mse"] <= err["minmax"]


@pytest.mark.parametrize("bits", [1, 0, 9, 33, 2.5, "x"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        quantize_tensor(torch.randn(4), bits)


def test_quantize_model_keeps_names_and_quantizes_weights(digits, unchanged):
    model = craftlab.create_model("vit-tiny", num_classes=10)
    with unchanged(model):  # the input is untouched
        q = craftlab.quantize(model, w_bits=4, a_bits=8, calib=digits.calib)
    assert [n for n, _ in q.named_modules()] == [n for n, _ in model.named_modules()]
    assert [n for n, _ in q.named_parameters()] == [n for n, _ in model.named_parameters()]
    qkv = q.blocks[0].attn.qkv
    assert isinstance(qkv, QuantLinear) and isinstance(qkv, nn.Linear) and qkv.w_bits == 4 and qkv.a_bits == 8
    for row in qkv.weight:
        assert row.unique().numel() <= 16
    assert not isinstance(q.head, QuantLinear) and not isinstance(q.patch_embed.proj, QuantConv2d)  # stem/head float
    # activation grid: the quantized input takes at most 2^8 values
    x = next(iter(digits.test))[0]
    seen = {}
    h = qkv.register_forward_pre_hook(lambda m, i: seen.update(x=m.quant_input(i[0])))
    q(x)
    h.remove()
    assert seen["x"].unique().numel() <= 256
    acc_fp = craftlab.evaluate(model, digits.test)["accuracy"]
    acc_q = craftlab.evaluate(q, digits.test)["accuracy"]
    assert abs(acc_fp - acc_q) < 0.1  # W4A8 on a pretrained tiny ViT keeps most accuracy


def test_quantize_cnn_conv_layers(digits):
    model = craftlab.create_model("resnet-tiny", num_classes=10)
    q = craftlab.quantize(model, w_bits=8, a_bits=8, calib=digits.calib, a_granularity="channel")
    conv = q.layer1[0].conv1
    assert isinstance(conv, QuantConv2d)
    assert conv.a_scale.shape == (1, conv.in_channels, 1, 1)
    out = q(next(iter(digits.test))[0])
    assert torch.isfinite(out).all()


def test_activation_bits_need_calibration():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="calib"):
        craftlab.quantize(model, w_bits=8, a_bits=8)
    with pytest.raises(ValueError, match="empty"):
        craftlab.quantize(model, w_bits=8, a_bits=8, calib=[])
    with pytest.raises(ValueError, match="w_bits"):
        craftlab.quantize(model, w_bits=33)
    with pytest.raises(ValueError, match="a_bits"):
        craftlab.quantize(model, w_bits=8, a_bits=1, calib=[torch.randn(2, 4)])


def test_model_stats_size_and_bitops():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    x = torch.randn(1, 10)
    s = craftlab.model_stats(model, x)
    n = sum(p.numel() for p in model.parameters())
    assert s["params"] == n and s["size_bits"] == 32 * n
    assert s["macs"] == 10 * 20 + 20 * 30 + 30 * 5
    assert s["bitops"] == s["macs"] * 32 * 32
    q = craftlab.quantize(model, w_bits=4, a_bits=8, calib=[x])  # middle layer only (stem/head excluded)
    sq = craftlab.model_stats(q, x)
    assert sq["size_bits"] == 32 * n - (32 - 4) * 20 * 30
    assert sq["bitops"] == (10 * 20 + 30 * 5) * 32 * 32 + 20 * 30 * 4 * 8
