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


def _hand_fake_quant(w, bits, symmetric, dims):
    """Min-max fake quantization written from scratch: range over `dims`, grid from the bit-width."""
    lo = w.amin(dim=dims, keepdim=True).clamp(max=0)
    hi = w.amax(dim=dims, keepdim=True).clamp(min=0)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = torch.maximum(-lo, hi) / qmax
        zero = torch.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale)
    # x * (1 / s), as torch.fake_quantize_* does (x / s can round the other way at 16 bits)
    return (torch.clamp(torch.round(w * (1.0 / scale)) + zero, qmin, qmax) - zero) * scale, scale


@pytest.mark.parametrize("bits", [2, 4, 6, 8, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_levels_and_error_bound_per_channel(bits, symmetric):
    torch.manual_seed(0)
    w = torch.randn(12, 40) * torch.rand(12, 1) * 4
    q = quantize_tensor(w, bits, axis=0, symmetric=symmetric)
    ref, scale = _hand_fake_quant(w, bits, symmetric, dims=[1])  # scale: max|w_c| / (2^(b-1) - 1) etc.
    torch.testing.assert_close(q, ref, rtol=1e-6, atol=1e-7)
    for c in range(12):
        assert q[c].unique().numel() <= 2**bits
        # minmax range covers every value: rounding error at most half a (hand-computed) step
        assert (q[c] - w[c]).abs().max() <= scale[c].item() / 2 + 1e-6
    assert q.shape == w.shape and q.dtype == w.dtype


def test_per_tensor_and_asymmetric_grid():
    x = torch.rand(1000) * 5 + 1  # all positive
    q = quantize_tensor(x, 4, symmetric=False)
    assert q.unique().numel() <= 16
    step = x.max().item() / 15  # range widened to [0, max]: 16 levels, 15 steps
    torch.testing.assert_close(q, _hand_fake_quant(x, 4, False, dims=[0])[0])
    # range widened to include zero: 0 is exactly representable
    assert quantize_tensor(torch.tensor([0.0, 6.0]), 4, symmetric=False)[0] == 0
    assert (q - x).abs().max() <= step / 2 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_channel_in_half_precision_quantizes_to_zeros(dtype, symmetric):
    torch.manual_seed(0)
    w = torch.randn(4, 16).to(dtype)
    w[1] = 0  # a fully pruned output channel
    for axis in (0, None):
        q = quantize_tensor(w if axis == 0 else torch.zeros(3, 5, dtype=dtype), 8, axis=axis, symmetric=symmetric)
        assert q.dtype == dtype and not torch.isnan(q).any()
        assert (q[1] == 0).all()
    q = quantize_tensor(w, 8, axis=0, symmetric=symmetric)
    assert ((q - w).abs().float().amax(1)[[0, 2, 3]] <= w.abs().float().amax(1)[[0, 2, 3]] / 100).all()


def test_half_precision_model_with_an_all_zero_activation_range():
    model = nn.Sequential(nn.Linear(8, 8))
    q = craftlab.quantize(model, w_bits=8, a_bits=8, calib=[torch.zeros(4, 8)], targets="all").half()
    out = q(torch.zeros(2, 8, dtype=torch.float16))
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, q[0].bias.expand(2, -1))


def _growing_batches(n_batches=5, rows=20000, features=16):
    """Calibration batches whose range grows: the last batch holds the extremes (5 x 320k values > 2**20)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(rows, features, generator=g) * (1 + i) + 0.5 * i for i in range(n_batches)]


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_activation_minmax_range_covers_every_calibration_batch(granularity, symmetric):
    batches = _growing_batches()
    model = nn.Sequential(nn.Linear(16, 4))
    q = craftlab.quantize(model, w_bits=None, a_bits=8, calib=batches, targets="all", a_granularity=granularity,
                          a_symmetric=symmetric)
    data = torch.cat(batches)  # the range over all the data, computed independently
    dims = [0] if granularity == "channel" else [0, 1]
    lo, hi = data.amin(dims).clamp(max=0), data.amax(dims).clamp(min=0)
    expected = torch.maximum(-lo, hi) / 127 if symmetric else (hi - lo) / 255
    torch.testing.assert_close(q[0].a_scale.reshape(-1), expected.reshape(-1))


def test_activation_percentile_samples_every_calibration_batch():
    batches = _growing_batches()
    model = nn.Sequential(nn.Linear(16, 4))
    q = craftlab.quantize(model, w_bits=None, a_bits=8, calib=batches, targets="all", method="percentile",
                          percentile=99.0)
    flat = torch.cat(batches).reshape(-1)
    lo, hi = torch.quantile(flat[::4], torch.tensor([0.01, 0.99]))  # exact quantiles of (a quarter of) all data
    expected = (hi.clamp(min=0) - lo.clamp(max=0)) / 255
    assert q[0].a_scale.item() == pytest.approx(expected.item(), rel=0.02)
    again = craftlab.quantize(model, w_bits=None, a_bits=8, calib=batches, targets="all", method="percentile",
                              percentile=99.0)
    assert torch.equal(q[0].a_scale, again[0].a_scale)  # the subsample is seeded: reproducible


def test_range_observer_sample_is_uniform_over_batches():
    from craftlab.compression._calib import RangeObserver

    obs = RangeObserver(per_channel=True, sample_values=2000 * 2)  # 2000 rows of 2 channels
    for i in range(10):
        obs.update(torch.full((1000, 2), float(i)))
    counts = torch.bincount(obs.sample[:, 0].long(), minlength=10)
    assert obs.sample.shape == (2000, 2) and obs.rows_seen == 10000
    assert (counts > 120).all() and (counts < 280).all()  # ~200 from each batch (binomial sd ~13)
    assert obs.lo.tolist() == [0.0, 0.0] and obs.hi.tolist() == [9.0, 9.0]


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
