"""craftlab.adapt: feature taps, the feature cache, LAST's side network, K-way training, MIET's transfer, memory.

Every claim here is checked against an independent computation (a hand-written block loop, a plain AdamW run,
a serialized message), so each test fails when the property it names breaks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import craftlab
from craftlab.adapt import miet, parallel, recipes, side, taps
from craftlab.compression.quant import quantize_tensor
from craftlab.measure.memory import SavedTensorMeter, measure_step


def _manual_taps(model, x):
    """z_0 … z_L by hand: timm's embedding steps, then the blocks one by one."""
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        zs = [h]
        for blk in model.blocks:
            h = blk(h)
            zs.append(h)
    return torch.stack(zs, 1)


# ------------------------------------------------------------------------------------------------ taps


def test_taps_match_a_hand_written_block_loop(vit, digits, unchanged):
    x, _ = next(iter(digits.test))
    with unchanged(vit):
        z, pooled = taps.tap_batch(vit, x)
    assert z.shape == (len(x), 5, 17, 64) and pooled.shape == (len(x), 64)
    torch.testing.assert_close(z, _manual_taps(vit, x), rtol=0, atol=1e-6)
    torch.testing.assert_close(vit.head(pooled), vit(x), rtol=0, atol=1e-5)
    assert z.grad_fn is None and not z.requires_grad and pooled.grad_fn is None
    sub, _ = taps.tap_batch(vit, x, taps=[4, 0, 2])  # sorted, de-duplicated
    torch.testing.assert_close(sub, z[:, [0, 2, 4]], rtol=0, atol=0)


def test_taps_fallback_without_forward_intermediates(vit, digits):
    x, _ = next(iter(digits.test))
    other = copy.deepcopy(vit)
    other.forward_intermediates = None  # as a ViT-style model without timm's API: forward hooks instead
    z, pooled = taps.tap_batch(other, x)
    torch.testing.assert_close(z, taps.tap_batch(vit, x)[0], rtol=0, atol=0)


def test_taps_build_no_graph_through_the_backbone(vit, digits):
    """Every backbone block runs with autograd off, even when the caller has it on."""
    grad_modes = []
    hooks = [b.register_forward_hook(lambda m, i, o: grad_modes.append(torch.is_grad_enabled())) for b in vit.blocks]
    try:
        with torch.enable_grad():
            taps.tap_batch(vit, next(iter(digits.test))[0])
    finally:
        for h in hooks:
            h.remove()
    assert grad_modes == [False] * 4


def test_taps_refuse_models_without_blocks_and_indices_outside_the_depth(vit):
    with pytest.raises(ValueError, match="blocks"):
        taps.depth(craftlab.build_model("resnet-tiny"))
    for bad in ([5], [-1], [1.5]):
        with pytest.raises(ValueError, match="outside the model's depth"):
            taps.check_taps(vit, bad)


# ------------------------------------------------------------------------------------------------ cache


def test_feature_cache_reuses_matching_entries_and_refuses_stale_ones(vit, small, tmp_path):
    calls = []
    hook = vit.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = taps.extract(vit, small, "train", cache=tmp_path, name="entry")
        n_first = len(calls)
        again = taps.extract(vit, small, "train", cache=tmp_path, name="entry")
        assert n_first > 0 and len(calls) == n_first, "a matching entry re-ran the backbone"
    finally:
        hook.remove()
    torch.testing.assert_close(again.z, first.z, rtol=0, atol=0)
    assert torch.equal(again.y, first.y)

    other_weights = copy.deepcopy(vit)
    with torch.no_grad():
        other_weights.blocks[0].mlp.fc1.weight.add_(1e-3)
    with pytest.raises(taps.StaleFeatureCache, match="other backbone weights"):
        taps.extract(other_weights, small, "train", cache=tmp_path, name="entry")
    x, y = small.train_set.tensors
    shifted = craftlab.from_tensors(x * 2.0, y, name="digits300")  # another normalization, same name and size
    with pytest.raises(taps.StaleFeatureCache, match="other data"):
        taps.extract(vit, shifted, "train", cache=tmp_path, name="entry")
    with pytest.raises(taps.StaleFeatureCache, match="taps"):
        taps.extract(vit, small, "train", taps=[0, 4], cache=tmp_path, name="entry")
    redone = taps.extract(other_weights, small, "train", cache=tmp_path, name="entry", overwrite=True)
    assert not torch.equal(redone.z, first.z)
    # a new head changes nothing the backbone computes: the entry still matches
    new_head = copy.deepcopy(other_weights)
    new_head.reset_classifier(3)
    taps.extract(new_head, small, "train", cache=tmp_path, name="entry")


def test_feature_cache_refuses_another_transform(vit, small):
    class Shown(torch.utils.data.Dataset):
        def __init__(self, base, transform):
            self.base, self.transform = base, transform

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y = self.base[i]
            return self.transform(x), y

    from torchvision.transforms import Normalize

    a = taps.data_fingerprint(Shown(small.test_set, Normalize((0.0,), (1.0,))))
    b = taps.data_fingerprint(Shown(small.test_set, Normalize((0.5,), (1.0,))))
    assert a["transform"] != b["transform"] and a["sha256"] != b["sha256"]
    # a function's repr holds its address, which changes from run to run: not part of the key
    assert taps.data_fingerprint(Shown(small.test_set, lambda x: x))["transform"].endswith("<lambda>>")
    assert taps._differences({"format": taps.FORMAT, "weights_sha256": "w", "data": a, "taps": [0]},
                             {"format": taps.FORMAT, "weights_sha256": "w", "data": b, "taps": [0]})


# ------------------------------------------------------------------------------------------------ LAST


def test_lsa_and_last_recurrence_by_hand():
    torch.manual_seed(0)
    net = side.LASTSideNet(8, 3, m=2, rank=2)
    for p in net.parameters():  # move every LSA off its zero start
        nn.init.normal_(p, std=0.3)
    z = torch.randn(4, 3, 5, 8)

    def lsa(mod, x):
        h = mod.down(F.layer_norm(x, (8,), mod.norm.weight, mod.norm.bias))
        q, k, v = mod.qkv(h).chunk(3, -1)
        return mod.up(torch.softmax(q @ k.transpose(-2, -1) / 2**0.5, -1) @ v)

    u = z[:, 0]
    for i in (1, 2):
        h = u + z[:, i]
        u = h + lsa(net.blocks[i - 1][0], h)
    torch.testing.assert_close(net.features(z), u - z[:, 0] - z[:, 1])
    assert side.LowRankSelfAttention(8, 2)(z[:, 0]).abs().max() == 0  # up-projection starts at zero


def test_fresh_last_is_the_linear_readout_of_the_backbone(vit, digits):
    """With every LSA at its zero start, LAST's corrected output is z_L: its norm + CLS = the pre-logits feature."""
    x, _ = next(iter(digits.test))
    t, view = recipes.side_spec(vit, "last", gap=2)
    net = recipes.build_side(vit, "last", t, 10)
    z, pooled = taps.tap_batch(vit, x, t)
    # equal up to the rounding of u_m − Σ z_i (sums of up to m+1 tensors, then their difference)
    torch.testing.assert_close(net.norm(net.features(z))[:, 0], pooled, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,kw", [("last", {"gap": 2}), ("miet", {"k": 2, "bits": 8})])
def test_side_training_leaves_the_backbone_untouched(vit, small, unchanged, method, kw):
    for p in vit.parameters():
        assert p.grad is None
    with unchanged(vit):
        res = recipes.adapt_model(vit, small, method, epochs=1, **kw)
    assert all(p.grad is None for p in vit.parameters())
    assert res.trainable_params == side.trainable_parameters(res.model.side) > 0
    assert {id(p) for p in res.model.parameters()}.isdisjoint({id(p) for p in vit.parameters()})
    acc = craftlab.evaluate(res.model, small.test)["accuracy"]  # images -> taps -> side: what training measured
    assert acc == pytest.approx(res.metrics["test_accuracy"])


def test_batch_order_is_the_bundles_training_order(small):
    order = [idx.tolist() for idx in parallel.batch_order(len(small.train_set), 32, seed=3)]
    x_all, y_all = small.train_set.tensors
    for idx, (x, _) in zip(order, small.loader("train", batch_size=32, seed=3), strict=True):
        assert torch.equal(x_all[idx], x)


# ------------------------------------------------------------------------------------------------ K-way


def _tiny_sources(vit, small, dtype):
    t, view = recipes.side_spec(vit, "last", gap=2, rank=4)
    src = recipes.sources(vit, small, t, view, "memory", torch.device("cpu"), splits=("train", "val"))
    cast = lambda s: parallel.Source.tensors(*(lambda x, y: (x.to(dtype), y))(*s.fetch(torch.arange(s.n))))
    return t, cast(src["train"]), cast(src["val"])


def test_kway_equals_separate_runs(vit, small):
    """Different lr, weight decay, rank and seed per network; float64 so rounding cannot hide a mistake."""
    t, train, val = _tiny_sources(vit, small, torch.float64)
    configs = [(4, 1e-2, 0.05, 0), (8, 3e-3, 0.0, 1), (4, 3e-2, 0.3, 2)]
    build = lambda r, s: recipes.build_side(vit, "last", t, 10, rank=r, seed=s).double()
    par = parallel.fit_parallel([build(r, s) for r, _, _, s in configs], train, val, epochs=2,
                                lrs=[c[1] for c in configs], weight_decays=[c[2] for c in configs], batch_size=32)
    for (r, lr, wd, s), got in zip(configs, par):
        ref = parallel.fit_one(build(r, s), train, val, epochs=2, lr=lr, weight_decay=wd, batch_size=32)
        for (name, a), b in zip(got.module.state_dict().items(), ref.module.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
        assert got.history[-1]["val_accuracy"] == ref.history[-1]["val_accuracy"]
        assert got.module.state_dict().keys() == ref.module.state_dict().keys()


def test_search_matches_adapt_model_and_runs_the_backbone_once_per_batch(vit, small):
    configs = [{"lr": 1e-2, "rank": 4}, {"lr": 3e-3, "rank": 8, "weight_decay": 0.0}]
    res = recipes.adapt_search(vit, small, configs, "last", epochs=1, gap=2)
    assert res.backbone_passes == len(parallel.batch_order(len(small.train_set), 32, 0))  # not K times that
    assert list(res.table["best"]).count(True) == 1
    assert res.table.loc[res.table["best"], "val_accuracy"].item() == res.table["val_accuracy"].max()
    for c, got in zip(configs, res.results):
        ref = recipes.adapt_model(vit, small, "last", epochs=1, gap=2, **c)
        # float32: Adam's normalised steps carry rounding differences of the batched kernels along (6 steps of
        # up to lr = 1e-2 each); test_kway_equals_separate_runs checks the same in float64 to 1e-10
        for a, b in zip(got.model.side.state_dict().values(), ref.model.side.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=5e-4)


def test_k_below_one_is_an_error(vit, small):
    with pytest.raises(ValueError, match="K >= 1"):
        parallel.fit_parallel([], parallel.Source.tensors(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="K >= 1"):
        recipes.adapt_search(vit, small, [], "last")


# ------------------------------------------------------------------------------------------------ MIET


def test_gather_star_is_the_sum_of_the_tapped_features(vit, small):
    feats = taps.extract(vit, small, "val")
    x = torch.stack([small.val_set[i][0] for i in range(len(small.val_set))])
    by_hand = _manual_taps(vit, x)
    for k in (0, 2, 4):
        want = sum(by_hand[:, i] for i in range(k + 1))
        torch.testing.assert_close(miet.gather_star(feats, k), want, rtol=0, atol=1e-5)
    t, view = recipes.side_spec(vit, "miet", k=2)
    assert t == (0, 1, 2)
    torch.testing.assert_close(view(*taps.tap_batch(vit, x, t)), miet.gather_star(feats, 2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_transfer_is_quantize_tensor_per_token_and_packed(bits):
    x = torch.randn(17, 63)
    msg = miet.encode(x, bits)
    assert msg["codes"].dtype == torch.uint8 and msg["codes"].numel() == 17 * -(-63 // (8 // bits))
    got = miet.decode(miet.deserialize(miet.serialize(msg)))
    assert torch.equal(got, quantize_tensor(x, bits, axis=0, symmetric=False))


def test_byte_counts_are_serialized_sizes(vit, digits):
    from safetensors.torch import save

    image = digits.test_set[0][0]
    rows = {r.method: r for r in miet.transfers(vit, image, k=4, gap=2)}
    z, pooled = taps.tap_batch(vit, image[None])
    expect = {"linear probe": {"x": pooled[0]}, "MIET": {"x": z[0].sum(0)}, "all features": {"x": z[0]},
              "LAST": {"x": z[0, [0, 2, 4]]}, "full fine-tuning": {"x": image.to(torch.uint8)}}
    for method, payload in expect.items():
        assert rows[method].per_image_bytes == len(save({k: v.contiguous() for k, v in payload.items()}))
        assert rows[method].payload_bytes == payload["x"].numel() * payload["x"].element_size()
    assert rows["full fine-tuning"].payload_bytes == image.numel()  # the uint8 image: one byte per pixel value
    for b in (8, 4):
        assert rows[f"MIET {b}-bit"].per_image_bytes == len(miet.serialize(miet.encode(z[0].sum(0), b)))
    state = {k: v.clone().contiguous() for k, v in vit.state_dict().items()}
    assert rows["full fine-tuning"].once_bytes == len(save(state))
    assert rows["MIET 4-bit"].per_image_bytes < rows["MIET 8-bit"].per_image_bytes < rows["MIET"].per_image_bytes
    assert rows["MIET"].payload_bytes * 5 == rows["all features"].payload_bytes  # one N×d tensor vs k+1 of them
    got, sizes = miet.send(z[:3, 0], bits=8)
    assert sizes == [len(miet.serialize(miet.encode(r, 8))) for r in z[:3, 0]]


def test_bad_k_gap_rank_bits_are_clear_errors(vit, small):
    cases = [({"method": "miet", "k": 5}, "outside the model's depth"),
             ({"method": "miet", "k": -1}, "outside the model's depth"),
             ({"method": "last", "gap": 0}, "outside the model's depth"),
             ({"method": "last", "gap": 5}, "outside the model's depth"),
             ({"method": "last", "gap": 3}, "does not divide"),
             ({"method": "last", "rank": 64}, "must be below the feature width"),
             ({"method": "miet", "rank": 100}, "must be below the feature width"),
             ({"method": "last", "rank": 6, "heads": 4}, "divisible"),
             ({"method": "miet", "bits": 3}, "transfer bits"),
             ({"method": "lasts"}, "unknown adaptation method")]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            recipes.adapt_model(vit, small, epochs=1, **kw)
    with pytest.raises(ValueError, match="blocks"):
        recipes.adapt_model(craftlab.build_model("resnet-tiny"), small, "last", epochs=1)


# ------------------------------------------------------------------------------------------------ memory


def test_measure_step_counts_saved_tensors_grads_and_adamw_state():
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    opt = torch.optim.AdamW(net.parameters())
    mem = measure_step(lambda: F.cross_entropy(net(x), y), net, opt)
    n = sum(p.numel() for p in net.parameters())
    # AdamW: two moments per parameter and one float32 step counter per parameter tensor (4 tensors)
    assert mem.grad_bytes == 4 * n and mem.optimizer_bytes == 2 * 4 * n + 4 * 4 and mem.trainable_params == n
    # saved: the input x (first Linear), tanh's output (tanh's and the second Linear's backward), log-softmax's
    # output, the targets and nll's total weight; not the weights (resident)
    with SavedTensorMeter(net) as saved:
        F.cross_entropy(net(x), y)
    assert saved.peak_bytes == mem.saved_bytes == 4 * (7 * 6 + 7 * 5 + 7 * 3) + 8 * 7 + 4
    frozen = nn.Linear(6, 6).requires_grad_(False)
    mem = measure_step(lambda: F.cross_entropy(net(frozen(x)), y), net, torch.optim.AdamW(net.parameters()),
                       frozen=[frozen])
    assert mem.weights_bytes == 4 * (n + 42) and mem.trainable_params == n


def test_side_tuning_holds_less_than_backpropagating_through_the_backbone(vit, digits):
    from craftlab.adapt.steps import method_memory

    x, y = next(iter(digits.loader("train", batch_size=16, shuffle=False)))
    last = method_memory(vit, x, y, "last", gap=2)
    full = method_memory(vit, x, y, "full")
    sam = method_memory(vit, x, y, "full", sam_rho=0.05)
    assert last.total_bytes < full.total_bytes / 2
    assert full.trainable_params == sum(p.numel() for p in vit.parameters())
    assert sam.optimizer_bytes == full.optimizer_bytes + full.grad_bytes  # SAM keeps one copy of the weights


def test_training_memory_counts_the_step_input(vit, digits):
    """Issue 19: LAST trains on tapped features, a larger input than the image: its memory must count them."""
    from craftlab.adapt.steps import method_memory

    x, y = next(iter(digits.loader("train", batch_size=16, shuffle=False)))
    z, pooled = taps.tap_batch(vit, x, [0, 2, 4])
    last = method_memory(vit, x, y, "last", gap=2)
    full = method_memory(vit, x, y, "full")
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (z, pooled)}  # views keep storages
    assert last.input_bytes == sum(held.values()) >= (z.numel() + pooled.numel()) * 4
    assert full.input_bytes == x.numel() * 4 and last.input_bytes > full.input_bytes
    assert last.total_bytes == last.saved_bytes + last.grad_bytes + last.optimizer_bytes + last.input_bytes
