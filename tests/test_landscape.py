"""Tests for craftlab.landscape: exact centres, filter normalization, no side effects, compression paths,
second-order predictions, JSON round trips, and a cross-check against loss_landscapes."""

from __future__ import annotations

import copy
import json

import loss_landscapes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_landscapes.metrics import Loss
from torch import nn

from craftlab import landscape as L
from craftlab.probes._probe import mean_loss


class Net(nn.Module):
    """Conv + BatchNorm + Dropout + Linear on 1x8x8 input; BN bias is all-zero (loss_landscapes' crash case)."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = act()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.act(self.bn(self.conv(x)))).flatten(1))


def make_net(seed: int = 0, act: type[nn.Module] = nn.ReLU, dtype: torch.dtype = torch.float32) -> Net:
    torch.manual_seed(seed)
    net = Net(act).to(dtype)
    with torch.no_grad():  # non-trivial BN statistics, then back to train mode
        net.train()
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8, dtype=dtype))
    return net


def make_batch(seed: int = 1, n: int = 24, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


def pruned(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    """A 'compressed model': zero the smallest-magnitude weights (ndim >= 2) of a deep copy."""
    c = copy.deepcopy(model)
    with torch.no_grad():
        for p in c.parameters():
            if p.ndim >= 2:
                k = int(p.numel() * sparsity)
                thr = p.abs().flatten().kthvalue(k).values
                p.masked_fill_(p.abs() <= thr, 0.0)
    return c


def rounded(model: nn.Module, step: float = 0.05) -> nn.Module:
    """A 'compressed model': weights rounded to a uniform grid."""
    c = copy.deepcopy(model)
    with torch.no_grad():
        for p in c.parameters():
            if p.ndim >= 2:
                p.copy_(torch.round(p / step) * step)
    return c


class FakeQuantLinear(nn.Linear):
    """A quantized-layer stand-in: an nn.Linear subclass with an extra buffer that quantizes its input."""

    def __init__(self, lin: nn.Linear, a_step: float = 0.25) -> None:
        super().__init__(lin.in_features, lin.out_features, bias=lin.bias is not None)
        self.load_state_dict(lin.state_dict())
        self.register_buffer("a_step", torch.tensor(a_step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x / self.a_step) * self.a_step)


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "req": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
    }


def assert_same(a: dict, b: dict) -> None:
    for key in ("params", "buffers"):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert a[key][n].dtype == b[key][n].dtype
            assert torch.equal(a[key][n], b[key][n]), f"{key} {n} changed"
    assert a["req"] == b["req"]
    assert a["modes"] == b["modes"]
    for n in a["grad"]:
        assert (a["grad"][n] is None) == (b["grad"][n] is None)
        if a["grad"][n] is not None:
            assert torch.equal(a["grad"][n], b["grad"][n])


def plain_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The model's loss computed independently of craftlab.landscape (eval mode, restored after)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = float(mean_loss(model, [batch]))
    model.train(was)
    return out


# ------------------------------------------------------------------------------------------- directions

def test_filter_normalized_direction_matches_filter_norms() -> None:
    net = make_net()
    with torch.no_grad():
        net.conv.weight[1].zero_()  # an all-zero filter -> zero direction filter, no NaN
    d = L.random_direction(net, seed=3)
    params = dict(net.named_parameters())
    assert d.keys() == params.keys()
    for n, p in params.items():
        assert d[n].shape == p.shape and torch.isfinite(d[n]).all()
        if p.ndim >= 2:
            wn = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            dn = d[n].reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, rtol=1e-5, atol=1e-7)
        else:
            assert torch.count_nonzero(d[n]) == 0, n
    assert torch.count_nonzero(d["conv.weight"][1]) == 0


def test_direction_options_and_seeds() -> None:
    net = make_net()
    a, b = L.random_direction(net, seed=0), L.random_direction(net, seed=0)
    assert all(torch.equal(a[n], b[n]) for n in a)
    c = L.random_direction(net, seed=1)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    # ignore=None: 1-D params scaled as a whole to the parameter's norm; the all-zero BN bias stays zero
    d = L.random_direction(net, seed=0, ignore=None)
    torch.testing.assert_close(d["bn.weight"].norm(), net.bn.weight.detach().norm())
    assert torch.count_nonzero(d["bn.bias"]) == 0 and torch.isfinite(d["bn.bias"]).all()
    # layer normalization: whole-tensor norms
    e = L.random_direction(net, seed=0, normalization="layer")
    torch.testing.assert_close(e["fc.weight"].norm(), net.fc.weight.detach().norm())
    # no normalization: plain Gaussian (1-D zeroed by ignore="biasbn")
    raw = L.random_direction(net, seed=0, normalization=None)
    assert abs(float(raw["fc.weight"].std()) - 1.0) < 0.1
    with pytest.raises(ValueError):
        L.random_direction(net, normalization="model")


# ------------------------------------------------------------------------------------------- centres

def test_line_and_plane_centres_are_the_models_loss() -> None:
    net, batch = make_net(), make_batch()
    loss0, acc0 = L.evaluate(net, batch)
    assert loss0 == plain_loss(net, batch)
    r = L.line(net, batch, steps=7, distance=0.5)
    assert r.alphas[3] == 0.0 and r.centre_index == 3
    assert r.loss[3] == loss0 and r.accuracy[3] == acc0
    np.testing.assert_allclose(r.alphas, -r.alphas[::-1])
    p = L.plane(net, batch, steps=5, distance=0.5)
    assert p.loss.shape == (5, 5) and p.centre_index == (2, 2)
    assert p.loss[2, 2] == loss0 and p.accuracy[2, 2] == acc0
    # the first random direction of plane(seed) is the direction of line(seed): same values along beta = 0
    r5 = L.line(net, batch, steps=5, distance=0.5)
    np.testing.assert_allclose(p.loss[:, 2], r5.loss, rtol=1e-6)
    assert set(p.meta["timing"]) >= {"total_s", "forward_s", "write_s"}


def test_plane_grid_indexing_and_given_directions() -> None:
    """loss[i, j] is at (alphas[i], betas[j]); an nn.Module direction means its parameters ARE the vector."""
    net, batch = make_net(), make_batch()
    d1, d2 = L.random_direction(net, seed=5), L.random_direction(net, seed=6)
    p = L.plane(net, batch, directions=(d1, d2), steps=3, distance=0.3, normalization=None)
    line_a = L.line(net, batch, direction=d1, steps=3, distance=0.3, normalization=None)
    line_b = L.line(net, batch, direction=d2, steps=3, distance=0.3, normalization=None)
    np.testing.assert_allclose(p.loss[:, 1], line_a.loss, rtol=1e-6)
    np.testing.assert_allclose(p.loss[1, :], line_b.loss, rtol=1e-6)
    as_module = copy.deepcopy(net)
    with torch.no_grad():
        for n, q in as_module.named_parameters():
            q.copy_(d1[n])
    np.testing.assert_array_equal(L.line(net, batch, direction=as_module, steps=3, distance=0.3,
                                         normalization=None).loss, line_a.loss)
    with pytest.raises(ValueError):
        L.line(net, batch, direction={"nope": torch.zeros(1)})
    with pytest.raises(ValueError):
        L.line(net, batch, direction={"fc.weight": torch.zeros(3)})


# ------------------------------------------------------------------------------------------- side effects

def _run_all(net: nn.Module, other: nn.Module, batch) -> None:
    L.random_direction(net)
    L.evaluate(net, batch)
    L.line(net, batch, steps=3)
    L.plane(net, batch, steps=3)
    L.plane(net, batch, steps=3, backend="loss-landscapes")
    L.interpolate(net, other, batch, steps=3)
    L.compression_path(net, other, batch, steps=3)
    L.compression_path(net, other, batch, steps=3, on="original")
    L.compression_plane(net, other, batch, steps=3)
    L.second_order_terms(net, batch, L.compression_delta(net, other))


def test_every_function_leaves_models_bit_identical() -> None:
    net, batch = make_net(), make_batch()
    net.train()  # BatchNorm + Dropout in train mode
    net.conv.bias.requires_grad_(False)
    net.fc.weight.grad = torch.full_like(net.fc.weight, 0.5)
    other = pruned(net)
    other.fc.eval()  # mixed modes
    before, before_other = snapshot(net), snapshot(other)
    _run_all(net, other, batch)
    assert_same(before, snapshot(net))
    assert_same(before_other, snapshot(other))
    assert net.training and net.bn.training and net.drop.training


# ------------------------------------------------------------------------------------------- compression

@pytest.mark.parametrize("compress", [pruned, rounded], ids=["prune", "round"])
def test_compression_path_endpoints(compress) -> None:
    net, batch = make_net(), make_batch()
    comp = compress(net)
    res = L.compression_path(net, comp, batch, steps=9, second_order=False)
    assert res.t[res.index_original] == 0.0 and res.t[res.index_compressed] == 1.0
    assert res.loss[res.index_compressed] == L.evaluate(comp, batch)[0]
    assert res.loss[res.index_original] == L.evaluate(net, batch)[0]
    assert res.accuracy[res.index_compressed] == L.evaluate(comp, batch)[1]
    assert res.meta["architecture_gap"] == 0.0
    assert np.isnan(res.predicted).all()


def test_compression_path_with_a_different_forward() -> None:
    """A 'quantized' model whose layers also quantize activations: t=1 still reproduces it exactly."""
    net, batch = make_net(), make_batch()
    comp = rounded(net)
    comp.fc = FakeQuantLinear(comp.fc)
    res = L.compression_path(net, comp, batch, t_range=(0.0, 1.0), steps=5, second_order=False)
    loss_c, loss_o = L.evaluate(comp, batch)[0], L.evaluate(net, batch)[0]
    assert res.loss[res.index_compressed] == loss_c
    assert res.meta["architecture_gap"] != 0.0
    assert res.meta["architecture_gap"] == pytest.approx(res.loss[res.index_original] - loss_o)
    orig = L.compression_path(net, comp, batch, t_range=(0.0, 1.0), steps=5, second_order=False, on="original")
    assert orig.loss[orig.index_original] == loss_o
    # the compressed weights in the original architecture
    plain = copy.deepcopy(net)
    plain.load_state_dict({k: v for k, v in comp.state_dict().items() if k != "fc.a_step"})
    assert orig.loss[orig.index_compressed] == L.evaluate(plain, batch)[0]


def test_compression_path_t_grid_always_has_0_and_1() -> None:
    net, batch = make_net(), make_batch()
    res = L.compression_path(net, pruned(net), batch, t_range=(-0.3, 1.3), steps=4, second_order=False)
    assert 0.0 in res.t and 1.0 in res.t and len(res.t) == 6 and np.all(np.diff(res.t) > 0)


def test_second_order_prediction_close_for_small_delta() -> None:
    net = make_net(act=nn.Tanh, dtype=torch.float64)
    batch = make_batch(dtype=torch.float64)
    comp = copy.deepcopy(net)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in comp.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=g, dtype=p.dtype) * p.detach().abs().mean())
    res = L.compression_path(net, comp, batch, t_range=(-1.0, 1.0), steps=9)
    measured, predicted = res.measured_delta, res.predicted_delta
    scale = np.abs(measured).max()
    assert scale > 0
    assert np.abs(measured - predicted).max() < 0.02 * scale
    # the quadratic term matters: first order alone is clearly worse on this curved path
    first_order = res.t * res.meta["grad_dot_delta"]
    assert np.abs(measured - first_order).max() > 5 * np.abs(measured - predicted).max()
    # independent check of g.delta and delta.H.delta by central finite differences along the path
    h = 1e-3
    fd = L.line(net, batch, direction=L.compression_delta(net, comp), distance=h, steps=3, normalization=None)
    lm, l0, lp = fd.loss
    assert (lp - lm) / (2 * h) == pytest.approx(res.meta["grad_dot_delta"], rel=1e-3, abs=1e-9)
    assert (lp - 2 * l0 + lm) / h ** 2 == pytest.approx(res.meta["delta_H_delta"], rel=1e-2, abs=1e-7)


def test_second_order_on_vit_uses_math_attention() -> None:
    """timm's fused attention has no double backward: the HVP must run through the math kernel, and the
    terms must be right (float64 central differences along the direction)."""
    from craftlab import create_model

    vit = create_model("vit-tiny", num_classes=10, pretrained=False).double()
    assert vit.blocks[0].attn.fused_attn
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (4,), generator=g)
    d = L.random_direction(vit, seed=0)
    terms = L.second_order_terms(vit, (x, y), d)
    h = 1e-4
    lm, l0, lp = L.line(vit, (x, y), direction=d, distance=h, steps=3, normalization=None).loss
    assert terms["loss"] == pytest.approx(l0, rel=1e-12)
    assert terms["grad_dot_delta"] == pytest.approx((lp - lm) / (2 * h), rel=1e-5)
    assert terms["delta_H_delta"] == pytest.approx((lp - 2 * l0 + lm) / h ** 2, rel=1e-5)
    assert abs(terms["delta_H_delta"]) > 1e-3  # not trivially zero


def test_compression_path_against_dense_hessian_and_plain_forwards() -> None:
    """Endpoints equal plain forwards of both models; the prediction equals g.delta and delta.H.delta
    computed with a dense Hessian (torch.func), independently of craftlab's HVP."""
    from torch.func import functional_call

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 5)).double()
    batch = make_batch(n=16, dtype=torch.float64)
    comp = rounded(net, step=0.1)
    res = L.compression_path(net, comp, batch, t_range=(-0.5, 1.5), steps=5)
    assert res.loss[res.index_original] == pytest.approx(plain_loss(net, batch), rel=1e-14)
    assert res.loss[res.index_compressed] == pytest.approx(plain_loss(comp, batch), rel=1e-14)

    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    delta = torch.cat([(c.detach() - p.detach()).reshape(-1) for p, c in zip(net.parameters(), comp.parameters())])

    def loss_of(flat_w: torch.Tensor) -> torch.Tensor:
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = flat_w[i:i + s.numel()].view(s)
            i += s.numel()
        return F.cross_entropy(functional_call(net, ps, (batch[0],)), batch[1])

    w.requires_grad_(True)
    gd = float(torch.autograd.grad(loss_of(w), w)[0] @ delta)
    dhd = float(delta @ torch.autograd.functional.hessian(loss_of, w.detach()) @ delta)
    assert res.meta["grad_dot_delta"] == pytest.approx(gd, rel=1e-10)
    assert res.meta["delta_H_delta"] == pytest.approx(dhd, rel=1e-10)
    expected = res.loss[res.index_original] + res.t * gd + 0.5 * res.t ** 2 * dhd
    np.testing.assert_allclose(res.predicted, expected, rtol=1e-12)
    assert res.meta["predicted_jump"] == pytest.approx(gd + 0.5 * dhd, rel=1e-10)


def test_compression_plane_marks_compressed_point() -> None:
    net, batch = make_net(), make_batch()
    comp = pruned(net)
    res = L.compression_plane(net, comp, batch, steps=5, distance=1.5)  # 1.0 is not on linspace(-1.5, 1.5, 5)
    i, j = int(np.flatnonzero(res.alphas == 1.0)[0]), int(np.flatnonzero(res.betas == 0.0)[0])
    assert res.loss[i, j] == L.evaluate(comp, batch)[0]
    assert res.loss[int(np.flatnonzero(res.alphas == 0.0)[0]), j] == L.evaluate(net, batch)[0]
    assert res.meta["mark"] == {"alpha": 1.0, "beta": 0.0, "label": "compressed"}
    assert res.loss.shape == (len(res.alphas), len(res.betas)) == (6, 5)


def test_interpolate_endpoints_with_different_bn_stats() -> None:
    a, b, batch = make_net(0), make_net(1), make_batch()
    res = L.interpolate(a, b, batch, steps=5, extend=0.25)
    assert res.alphas[0] == -0.25 and res.alphas[-1] == 1.25
    assert res.loss[list(res.alphas).index(0.0)] == L.evaluate(a, batch)[0]
    assert res.loss[list(res.alphas).index(1.0)] == L.evaluate(b, batch)[0]
    no_buf = L.interpolate(a, b, batch, steps=5, extend=0.25, buffers=False)
    assert no_buf.loss[list(no_buf.alphas).index(1.0)] != L.evaluate(b, batch)[0]


def test_mismatched_compressed_model_is_rejected() -> None:
    net, batch = make_net(), make_batch()
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ValueError, match="same parameter names"):
        L.compression_path(net, other, batch)


# ------------------------------------------------------------------------------------------- serialisation

def test_json_round_trip() -> None:
    net, batch = make_net(), make_batch()
    results = [L.line(net, batch, steps=3), L.plane(net, batch, steps=3),
               L.compression_path(net, pruned(net), batch, steps=3, second_order=False),
               L.compression_path(net, pruned(net), batch, steps=3)]
    for res in results:
        text = json.dumps(res.to_dict(), allow_nan=False)
        back = type(res).from_dict(json.loads(text))
        for f in ("alphas", "betas", "t", "loss", "accuracy", "predicted"):
            if hasattr(res, f):
                np.testing.assert_array_equal(getattr(back, f), getattr(res, f))
        assert back.meta == json.loads(json.dumps(res.meta))
        assert back.to_dict() == res.to_dict()


# ------------------------------------------------------------------------------------------- loss_landscapes

def test_plane_matches_loss_landscapes_planar_interpolation() -> None:
    """Same two directions: our plane(normalization=None) vs planar_interpolation's raw grid.

    loss_landscapes 3.0.6 returns Z[i, j] at m0 + (i/k)(m1 - m0) + ((j + [i even])/k)(m2 - m0) (its
    boustrophedon walk is off by one step on even rows). Our grid with steps = 2k + 1 on [-1, 1] has all
    those points at indices (k + i, k + j + [i even]).
    """
    net, batch = make_net(), make_batch()
    net.eval()
    d1, d2 = L.random_direction(net, seed=1), L.random_direction(net, seed=2)
    k = 4
    ours = L.plane(net, batch, directions=(d1, d2), distance=1.0, steps=2 * k + 1, normalization=None)
    m0, m1, m2 = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    with torch.no_grad():
        for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
            p1.add_(d1[n])
            p2.add_(d2[n])
    z = loss_landscapes.planar_interpolation(m0, m1, m2, Loss(F.cross_entropy, *batch), steps=k)
    assert z.shape == (k, k)
    converted = np.array([[ours.loss[k + i, k + j + (1 if i % 2 == 0 else 0)] for j in range(k)] for i in range(k)])
    np.testing.assert_allclose(z, converted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [4, 5])
def test_loss_landscapes_backend_equals_native(steps: int) -> None:
    net, batch = make_net(), make_batch()  # BN bias all-zero: loss_landscapes' filter_normalize_ would crash
    native = L.plane(net, batch, steps=steps, distance=0.7, seed=4)
    other = L.plane(net, batch, steps=steps, distance=0.7, seed=4, backend="loss-landscapes")
    np.testing.assert_array_equal(other.alphas, native.alphas)
    np.testing.assert_allclose(other.loss, native.loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(other.accuracy, native.accuracy)
    assert other.meta["timing"]["backend_points"] == (steps + 1) ** 2


@pytest.mark.parametrize("name", ["resnet-tiny", "vit-tiny"])
def test_vmapped_grid_equals_the_loop(name, unchanged) -> None:
    """Stacked weights through vmap(functional_call) give the loop's losses and accuracies to 1e-6, on a
    plane (two batches of different sizes, a chunk size that does not divide the grid) and a line."""
    import craftlab

    model = craftlab.create_model(name, num_classes=10, progress=False)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 28, 28, generator=gen), torch.randint(0, 10, (24,), generator=gen)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    with unchanged(model):
        loop = L.plane(model, batches, steps=5, distance=0.5, seed=3)
        vm = L.plane(model, batches, steps=5, distance=0.5, seed=3, batch_points=7)
        line_loop = L.line(model, batches, steps=9, seed=1)
        line_vm = L.line(model, batches, steps=9, seed=1, batch_points=4)
    np.testing.assert_allclose(vm.loss, loop.loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vm.accuracy, loop.accuracy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(line_vm.loss, line_loop.loss, rtol=1e-6, atol=1e-6)
    assert vm.meta["timing"]["points_per_pass"] == 7
    assert loop.loss.std() > 1e-3  # the grid is not flat: the comparison means something
    with pytest.raises(ValueError, match="batch_points"):
        L.plane(model, batches, steps=3, batch_points=0)


# ------------------------------------------------------------------------------- slices in one pass, reuse

def _bn_shifted(model: nn.Module) -> nn.Module:
    """A pruned copy whose BatchNorm statistics moved too (as re-estimated after pruning)."""
    c = pruned(model)
    with torch.no_grad():
        c.bn.running_mean.add_(0.3)
        c.bn.running_var.mul_(1.2)  # stays > 0 at alpha = -1.5
    return c


@pytest.mark.parametrize("on,buffers", [("compressed", True), ("compressed", False), ("original", False)])
def test_compression_slices_equal_path_and_plane(on, buffers, unchanged) -> None:
    """One pass (path = the plane's beta = 0 line) gives exactly compression_path's and compression_plane's
    values; reusing a coarser level's points evaluates only the new ones and still gives the same values."""
    net, batch = make_net(), make_batch()
    comp = _bn_shifted(net)
    kw = dict(on=on, buffers=buffers)
    with unchanged(net), unchanged(comp):
        path = L.compression_path(net, comp, batch, steps=21, **kw)
        plane = L.compression_plane(net, comp, batch, steps=13, distance=1.5, seed=2, **kw)
        sp, sq = L.compression_slices(net, comp, batch, path_steps=21, plane_steps=13, distance=1.5, seed=2, **kw)
        coarse = L.compression_slices(net, comp, batch, path_steps=9, plane_steps=5, distance=1.5, seed=2, **kw)
        rp, rq = L.compression_slices(net, comp, batch, path_steps=21, plane_steps=13, distance=1.5, seed=2,
                                      reuse=coarse, **kw)
    for p, q in ((sp, sq), (rp, rq)):
        np.testing.assert_allclose(p.loss, path.loss, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(p.t, path.t)
        np.testing.assert_array_equal(p.accuracy, path.accuracy)
        np.testing.assert_allclose(p.predicted, path.predicted, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(q.loss, plane.loss, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(q.alphas, plane.alphas)
        np.testing.assert_array_equal(q.accuracy, plane.accuracy)
        for key in ("loss_original", "loss_compressed", "architecture_gap", "delta_H_delta", "grad_dot_delta"):
            assert p.meta[key] == pytest.approx(path.meta[key], abs=1e-6), key
    assert plane.loss.std() > 1e-3 and np.ptp(path.loss) > 1e-3  # not flat: the comparison means something
    # 21-point path t = -0.5 .. 1.5 (step 0.1) shares -0.5, 0, 0.5, 1, 1.5 with the 13 x 13 plane (step 0.25)
    assert plane.loss.shape == (13, 13)
    assert sp.meta["timing"]["points"] == 169 + 16 and sp.meta["timing"]["reused"] == 0
    # the coarse 6 x 5 plane (alpha 1 added) lies on the fine grid; its 9-point path (step 0.25) adds 5 points
    # off that plane (-0.5, -0.25, 0.25, 0.5, 1.25), all on the fine plane's beta = 0 row
    assert rp.meta["timing"]["reused"] == 30 + 5
    assert rp.meta["timing"]["points"] == 169 + 16 - 35


def test_compression_slices_refuse_results_of_other_slices() -> None:
    net, batch = make_net(), make_batch()
    comp = pruned(net)
    coarse = L.compression_slices(net, comp, batch, path_steps=5, plane_steps=3, seed=0, second_order=False)
    with pytest.raises(ValueError, match="seed"):
        L.compression_slices(net, comp, batch, path_steps=9, plane_steps=5, seed=1, reuse=coarse)
    with pytest.raises(ValueError, match="delta_norm"):
        L.compression_slices(net, pruned(net, 0.3), batch, path_steps=9, plane_steps=5, reuse=coarse)
    with pytest.raises(ValueError, match="buffers"):
        L.compression_slices(net, comp, batch, path_steps=9, plane_steps=5, buffers=True, reuse=coarse)
    with pytest.raises(ValueError, match="compression_path"):
        L.compression_slices(net, comp, batch, path_steps=9, plane_steps=5, reuse=[L.line(net, batch, steps=3)])


def test_line_and_plane_equal_line_and_plane(unchanged) -> None:
    """The random line is the random plane's beta = 0 row: one pass gives line()'s and plane()'s values, and a
    coarser level's points are reused; a level drawn with another seed is refused."""
    net, batch = make_net(), make_batch()
    with unchanged(net):
        ln, pl = L.line(net, batch, steps=21, seed=4), L.plane(net, batch, steps=13, seed=4)
        one_ln, one_pl = L.line_and_plane(net, batch, line_steps=21, plane_steps=13, seed=4)
        coarse = L.line_and_plane(net, batch, line_steps=9, plane_steps=5, seed=4)
        re_ln, re_pl = L.line_and_plane(net, batch, line_steps=21, plane_steps=13, seed=4, reuse=coarse)
    for a, b in ((one_ln, ln), (re_ln, ln), (one_pl, pl), (re_pl, pl)):
        np.testing.assert_array_equal(a.alphas, b.alphas)
        np.testing.assert_allclose(a.loss, b.loss, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(a.accuracy, b.accuracy)
    assert pl.loss.std() > 1e-3
    # the line's 21 points (step 0.1) meet the plane's 13 (step 1/6) at -1, -0.5, 0, 0.5, 1
    assert one_pl.meta["timing"]["points"] == 169 + 21 - 5
    assert re_pl.meta["timing"]["reused"] > 0
    assert re_pl.meta["timing"]["points"] == 169 + 21 - 5 - re_pl.meta["timing"]["reused"]
    with pytest.raises(ValueError, match="seed"):
        L.line_and_plane(net, batch, line_steps=21, plane_steps=13, seed=5, reuse=coarse)
