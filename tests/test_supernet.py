"""Mixed-precision supernet: BitOPs by hand, export == supernet, LSQ gradients, LoRA freezing and selection, the
sandwich step, checkpoints and bad input."""

import random

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

import craftlab
from craftlab.checkpoint import CheckpointError
from craftlab.compression.quant import QuantLinear, fake_quant, grid, model_stats
from craftlab.supernet.build import build_supernet
from craftlab.supernet.layers import lsq_quantize
from craftlab.supernet.space import SubnetConfig
from craftlab.supernet.store import load_supernet, save_supernet
from craftlab.supernet.train import make_optimizer, progressive_stages, sandwich_step


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=16, depth=2, num_heads=2,
                          mlp_ratio=2.0)
    return m.eval()


def calib(n=16, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, size, size, generator=g), torch.zeros(n, dtype=torch.long))]


def perturb_lora(sn, scale=0.05):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in sn.parameter_groups()["lora"]:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def build(model=None, **kw):
    kw.setdefault("step_init", "minmax")
    kw.setdefault("input_size", (1, 16, 16))
    return build_supernet(model if model is not None else tiny_vit(), calib(), **kw)


def test_bitops_of_a_configuration_equal_a_hand_count_on_a_two_layer_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    sn = build_supernet(model, [torch.randn(4, 3, 2, 2)], targets="all", lora=None, w_bits=(2, 4, 8),
                        a_bits=(4, 8), input_size=(3, 2, 2))
    cfg = SubnetConfig(w_bits=(2, 8), a_bits=(8, 4), resolution=2)
    # layer 1: 12*8 = 96 MACs at W2A8; layer 2: 8*3 = 24 MACs at W8A4
    cost = sn.cost(cfg)
    assert cost["macs"] == 96 + 24
    assert cost["bitops"] == 96 * 2 * 8 + 24 * 8 * 4 == 2304
    assert cost["size_bits"] == 96 * 2 + 8 * 32 + 24 * 8 + 3 * 32
    assert sn.references() == {"FP32": 120 * 32 * 32, "W8A8": 120 * 64}
    with pytest.raises(ValueError, match="no searchable layers"):  # default targets skip the stem and the head
        build_supernet(model, [torch.randn(4, 3, 2, 2)], lora=None, input_size=(3, 2, 2))


def test_vit_bitops_hand_count_with_structural_operators():
    sn = build(lora=None, depths=(1, 2), heads=(1, 2), mlp_ratios=(1.0, 2.0), resolutions=(8, 16))
    cfg = SubnetConfig(w_bits=(4,) * 8, a_bits=(8,) * 8, resolution=8, depth=1, mlp_ratio=1.0, heads=1)
    n, d, hd = (8 // 4) ** 2 + 1, 16, 8  # tokens at 8 px: a 2x2 grid + CLS
    block = n * d * 3 * hd + n * hd * d + n * d * 16 + n * 16 * d  # qkv (1 head), proj, fc1, fc2 (hidden 16)
    fixed = 4 * (1 * 4 * 4) * d + d * 5  # patch embedding (4 patches) and head, FP32
    attn = 2 * 1 * n * n * hd  # q·kᵀ and attn·v of the one head kept, at the qkv layer's activation bits (8)
    cost = sn.cost(cfg)
    assert cost["macs"] == block + fixed and cost["macs_attention"] == attn
    assert cost["bitops"] == block * 4 * 8 + fixed * 32 * 32 + attn * 8 * 8
    assert cost["bitops_attention"] == attn * 8 * 8
    mixed = SubnetConfig(w_bits=(4,) * 8, a_bits=(6, 8, 8, 8, 4, 8, 8, 8), resolution=16, depth=2, mlp_ratio=2.0,
                         heads=2)  # block 0's qkv at A6, block 1's at A4
    n16 = (16 // 4) ** 2 + 1
    per_block = 2 * 2 * n16 * n16 * hd
    assert sn.cost(mixed)["bitops_attention"] == per_block * 6 * 6 + per_block * 4 * 4
    float_attn = build(lora=None, depths=(1, 2), heads=(1, 2), mlp_ratios=(1.0, 2.0), resolutions=(8, 16),
                       quant_attention=False)
    assert float_attn.cost(cfg)["bitops"] == block * 4 * 8 + fixed * 32 * 32  # the old convention, on request


def test_quantized_attention_matches_an_independent_fake_quant_computation():
    sn = build(lora=None, w_bits=(4, 8), a_bits=(4, 8))
    cfg = sn.space.uniform(8, 4)
    sn.set_config(cfg)
    attn = sn.net.blocks[0].attn
    x = torch.randn(3, 17, 16)
    with torch.no_grad():
        got = attn(x)
        s = {op: attn.attn_log_step[f"{op}4"].exp() for op in "qkvp"}
        fq = lambda t, step, lo, hi: torch.clamp(torch.round(t / step), lo, hi) * step  # noqa: E731
        qkv = attn.qkv(x).reshape(3, 17, 3, 2, 8).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = fq(q * 8 ** -0.5, s["q"], -8, 7) @ fq(k, s["k"], -8, 7).transpose(-2, -1)
        o = fq(a.softmax(-1), s["p"], 0, 15) @ fq(v, s["v"], -8, 7)
        want = attn.proj(o.transpose(1, 2).reshape(3, 17, 16))
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.isclose(s["p"], torch.tensor(1 / 15))  # probabilities: [0, 1] on 16 unsigned levels
        attn.a_bits = None  # float: timm's own unfused attention on the same module
        attn.fused_attn = False
        assert torch.allclose(attn(x), Attention.forward(attn, x), atol=1e-6)
        assert not torch.allclose(got, Attention.forward(attn, x), atol=1e-4)  # quantizing changes the output


@pytest.mark.parametrize("lora", ["per-bit", "shared", None])
def test_exported_subnet_gives_the_supernets_outputs_and_costs(lora):
    sn = build(lora=lora, w_bits=(2, 3, 4, 8), a_bits=(4, 8), depths=(1, 2), heads=(1, 2), mlp_ratios=(1.0, 2.0),
               resolutions=(8, 12, 16))
    perturb_lora(sn)
    x = torch.randn(6, 1, 16, 16)
    rng = random.Random(0)
    configs = [sn.space.largest(), sn.space.smallest()] + [sn.space.sample(rng) for _ in range(6)]
    for cfg in configs:
        sn.set_config(cfg)
        with torch.no_grad():
            expected = sn(x)
        plain = sn.export(cfg)
        with torch.no_grad():
            got = plain(x)
        assert torch.equal(got, expected), cfg.label()
        stats = model_stats(plain, x[:1])
        cost = sn.cost(cfg)
        # model_stats counts Conv2d/Linear only: the supernet's figure adds the quantized attention matmuls
        assert cost["bitops_attention"] > 0
        assert (stats["bitops"], stats["macs"], stats["size_bits"]) == (cost["bitops"] - cost["bitops_attention"],
                                                                         cost["macs"], cost["size_bits"]), cfg.label()
        layers = [m for m in plain.modules() if isinstance(m, QuantLinear)]
        assert len(layers) == 4 * cfg.depth and not any("lora" in n for n, _ in plain.named_parameters())
        assert sorted({(m.w_bits, m.a_bits) for m in layers}) == sorted(
            {(w, a) for w, a, b in zip(cfg.w_bits, cfg.a_bits, sn.space.blocks) if b < cfg.depth})


def test_lsq_matches_the_papers_straight_through_formulation():
    torch.manual_seed(0)
    x = (torch.randn(64, 10) * 2).requires_grad_()
    s = torch.full((64, 1), 0.3).requires_grad_()
    out = lsq_quantize(x, s, 3, 10)
    out.pow(2).sum().backward()
    gx, gs = x.grad.clone(), s.grad.clone()
    # Esser et al.: v_hat = round_pass(clamp(v / s_scaled, -Qn, Qp)) * s_scaled, s_scaled = s*g + (s - s*g).detach()
    x2, s2 = x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    qmin, qmax = grid(3, True)
    g = 1 / (10 * qmax) ** 0.5
    s_scaled = s2 * g + (s2 - s2 * g).detach()
    v = torch.clamp(x2 / s_scaled, qmin, qmax)
    ref = (v + (v.round() - v).detach()) * s_scaled
    ref.pow(2).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, x2.grad)
    torch.testing.assert_close(gs, s2.grad, rtol=1e-4, atol=1e-5)
    assert torch.equal(out, fake_quant(x.detach(), s.detach(), torch.zeros(()), qmin, qmax))


def test_with_lora_only_lora_and_step_sizes_train_and_base_weights_stay_bit_identical():
    sn = build(lora="shared", w_bits=(2, 8), a_bits=(4, 8))
    base = {n: p.detach().clone() for n, p in sn.named_parameters() if ".lora_" not in n and "_log_step" not in n}
    assert base and all(not p.requires_grad for n, p in sn.named_parameters() if n in base)
    opt = make_optimizer(sn, 1e-2, 1e-3, 1e-3)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 5, (8,))
    sn.train()
    for _ in range(2):
        sandwich_step(sn, opt, x, y, [sn.space.largest(), sn.space.smallest()])
    with_grad = {n for n, p in sn.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_A." in n or ".lora_B." in n or "_log_step." in n for n in with_grad)
    assert any(".lora_B." in n for n in with_grad)
    for n, p in sn.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"{n} changed"
    assert all(w.lora_B["shared"].weight.abs().sum() > 0 for w in sn.wrappers().values())  # B left zero


def test_per_bit_lora_uses_the_adapter_of_the_layers_current_weight_bits():
    sn = build(lora="per-bit", w_bits=(2, 4, 8), a_bits=(8,))
    perturb_lora(sn)
    names = list(sn.space.layers)
    target = names[1]
    w = tuple(4 if n == target else 8 for n in names)
    sn.set_config(SubnetConfig(w, (8,) * len(names), resolution=16, depth=2, mlp_ratio=2.0, heads=2))
    sn.train()
    x = torch.randn(4, 1, 16, 16)
    sn(x).sum().backward()
    for name, wrapper in sn.wrappers().items():
        want = "w4" if name == target else "w8"
        for adapter in ("w2", "w4", "w8"):
            has = wrapper.lora_A[adapter].weight.grad is not None
            assert has == (adapter == want), (name, adapter)
    # the layer computes Q_a(x) Q_w(W + s B_w4 A_w4)^T + b
    wrapper = sn.wrappers()[target]
    layer = wrapper.get_base_layer()
    inp = torch.randn(3, 5, layer.in_features)
    delta = (wrapper.lora_B["w4"].weight @ wrapper.lora_A["w4"].weight) * wrapper.scaling["w4"]
    qmin, qmax = grid(4, True)
    qw = fake_quant(layer.weight + delta, layer.weight_step(4), torch.zeros(()), qmin, qmax)
    qmin8, qmax8 = grid(8, True)
    qx = fake_quant(inp, layer.act_step(8), torch.zeros(()), qmin8, qmax8)
    torch.testing.assert_close(wrapper(inp), F.linear(qx, qw, layer.bias))


def test_sandwich_step_trains_the_largest_and_the_smallest_subnet():
    sn = build(lora="per-bit", w_bits=(2, 4, 8), a_bits=(4, 8))
    opt = make_optimizer(sn, 1e-2, 1e-3, 1e-3)
    sn.train()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 5, (8,))
    configs = [sn.space.largest(), sn.space.smallest()]
    losses = sandwich_step(sn, opt, x, y, configs)
    assert len(losses) == 2 and sn.config == sn.space.largest()
    for wrapper in sn.wrappers().values():  # B starts at zero: only trained adapters moved
        assert wrapper.lora_B["w8"].weight.abs().sum() > 0  # the largest subnet (all W8)
        assert wrapper.lora_B["w2"].weight.abs().sum() > 0  # the smallest subnet (all W2)
        assert wrapper.lora_B["w4"].weight.abs().sum() == 0  # in neither


def test_progressive_stages_add_lower_bits_last():
    sn = build(lora=None)
    stages = progressive_stages(sn.space, 3)
    assert stages[0] == ((6, 8), (8,)) and stages[-1] == (sn.space.w_bits, sn.space.a_bits)
    assert all(set(a[0]) <= set(b[0]) for a, b in zip(stages, stages[1:]))


def test_supernet_checkpoint_roundtrip_and_other_base_model_is_refused(tmp_path):
    model = craftlab.build_model("vit-tiny", num_classes=10)
    data_calib = [torch.randn(8, 1, 28, 28)]
    sn = build_supernet(model, data_calib, lora="per-bit", step_init="minmax", depths=(3, 4))
    perturb_lora(sn)
    save_supernet(sn, tmp_path / "sn", {"note": "test"})
    again = load_supernet(tmp_path / "sn", expected_architecture="vit-tiny", base_model=model)
    x = torch.randn(4, 1, 28, 28)
    cfg = sn.space.sample(random.Random(1))
    with torch.no_grad(), sn.using(cfg), again.using(cfg):
        assert torch.equal(sn(x), again(x))
    with pytest.raises(CheckpointError, match="'vit-tiny' model, not 'resnet-tiny'"):
        load_supernet(tmp_path / "sn", expected_architecture="resnet-tiny")
    other = craftlab.build_model("vit-tiny", num_classes=10, seed=1)
    with pytest.raises(CheckpointError, match="another 'vit-tiny' base model"):
        load_supernet(tmp_path / "sn", base_model=other)
    with pytest.raises(CheckpointError, match="not a craftlab supernet"):
        load_supernet(tmp_path)


def test_bad_input_gives_clear_errors():
    sn = build(lora=None, w_bits=(2, 4, 8), a_bits=(4, 8))
    n = len(sn.space.layers)
    with pytest.raises(ValueError, match=r"w_bits 3 of layer .* is not in the candidate set \(2, 4, 8\)"):
        sn.set_config(SubnetConfig((3,) + (8,) * (n - 1), (8,) * n, 16, 2, 2.0, 2))
    with pytest.raises(ValueError, match="depth 1 is not in the search space"):
        sn.set_config(SubnetConfig((8,) * n, (8,) * n, 16, 1, 2.0, 2))
    with pytest.raises(ValueError, match="bit-widths from 2..8"):
        build(w_bits=(2, 9))
    with pytest.raises(ValueError, match="multiples of the patch size 4"):
        build(resolutions=(10, 16))
    with pytest.raises(ValueError, match="this ViT has 2 blocks"):
        build(depths=(1, 3))
    resnet = craftlab.build_model("resnet-tiny", num_classes=10)
    with pytest.raises(ValueError, match="operator 'depth' is not supported for ResNet"):
        build_supernet(resnet, [torch.randn(4, 1, 28, 28)], depths=(1, 2))
    with pytest.raises(ValueError, match="LoRA needs switchable Linear layers"):
        build_supernet(resnet, [torch.randn(4, 1, 28, 28)], lora="shared", step_init="minmax")
    cnn = build_supernet(resnet, [torch.randn(4, 1, 28, 28)], lora=None, step_init="minmax")  # bits only: fine
    with pytest.raises(ValueError, match="operator 'heads' is not supported"):
        cnn.set_config(SubnetConfig(cnn.space.largest().w_bits, cnn.space.largest().a_bits, 28, heads=2))
    with pytest.raises(ValueError, match="lora must be one of"):
        build(lora="multi")


def test_merging_lora_into_the_quantized_layer_keeps_its_output():
    """peft's merge adds s·B·A to the weight; this layer quantizes W + s·B·A either way (quantization-aware LoRA)."""
    sn = build(lora="shared", w_bits=(4, 8), a_bits=(8,))
    perturb_lora(sn)
    sn.set_config(sn.space.uniform(4, 8))
    wrapper = next(iter(sn.wrappers().values()))
    x = torch.randn(3, 7, wrapper.in_features)
    with torch.no_grad():
        before = wrapper(x)
        wrapper.merge()
        after = wrapper(x)
    assert wrapper.merged and wrapper.adapters_in_use() == []
    torch.testing.assert_close(after, before)


def _saved_weight_shaped(sn, x, y):
    """Saved-for-backward tensors shaped like a searchable layer's weight that are not a parameter's storage."""
    params = {p.untyped_storage().data_ptr() for p in sn.parameters()}
    shapes = {tuple(layer.weight.shape) for layer in sn.layers().values()}
    found = []

    def pack(t):
        if tuple(t.shape) in shapes and t.untyped_storage().data_ptr() not in params:
            found.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(sn(x), y).backward()
    return found


def _old_lora_forward(sn, x):
    """The previous path: quantize the materialized W + s·B·A (kept by autograd for the STE)."""
    from craftlab.supernet.lora import QuantLoraLinear

    def fwd(self, inp, *a, **k):
        base = self.get_base_layer()
        w, b = base.quantized_weight(self.delta())
        return F.linear(base.quantize_input(inp), w, b)

    old = QuantLoraLinear.forward
    QuantLoraLinear.forward = fwd
    try:
        return sn(x)
    finally:
        QuantLoraLinear.forward = old


@pytest.mark.parametrize("mode", ["per-bit", "shared"])
def test_lora_keeps_no_weight_copy_for_backward_and_its_gradients_equal_the_plain_path(mode):
    sn = build(lora=mode, w_bits=(2, 4, 8), a_bits=(4, 8), heads=(1, 2), mlp_ratios=(1.0, 2.0))
    full = build(lora=None, w_bits=(2, 4, 8), a_bits=(4, 8), heads=(1, 2), mlp_ratios=(1.0, 2.0))
    perturb_lora(sn)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    for cfg in (sn.space.largest(), SubnetConfig((4, 2, 8, 4) * 2, (8, 4, 4, 8) * 2, 16, 2, 1.0, 1)):
        sn.set_config(cfg)
        full.set_config(cfg)
        # one weight-shaped tensor per layer is saved: the quantized weight F.linear keeps (as in full-weight
        # training); the sum W + s·B·A is not (the old path kept both)
        saved = _saved_weight_shaped(sn, x, y)
        assert len(saved) == len(_saved_weight_shaped(full, x, y))
        sn.zero_grad(set_to_none=True)
        F.cross_entropy(sn(x), y).backward()
        new = {n: p.grad.clone() for n, p in sn.named_parameters() if p.grad is not None}
        sn.zero_grad(set_to_none=True)
        F.cross_entropy(_old_lora_forward(sn, x), y).backward()
        old = {n: p.grad.clone() for n, p in sn.named_parameters() if p.grad is not None}
        assert new.keys() == old.keys() and any(".lora_A." in n for n in new)
        for n in new:
            assert torch.allclose(new[n], old[n], rtol=1e-5, atol=1e-7), n
    params = {p.untyped_storage().data_ptr() for p in sn.parameters()}

    def count_old(t, found):
        if t.untyped_storage().data_ptr() not in params and t.dim() == 2 and t.shape[1] >= 16:
            found.append(tuple(t.shape))
        return t

    sn.set_config(sn.space.largest())
    old_saved, new_saved = [], []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: count_old(t, old_saved), lambda t: t):
        F.cross_entropy(_old_lora_forward(sn, x), y).backward()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: count_old(t, new_saved), lambda t: t):
        F.cross_entropy(sn(x), y).backward()
    assert len(old_saved) > len(new_saved)  # the check can fail: the old path is caught by it
