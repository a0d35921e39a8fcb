"""craftlab.measure: one definition per quantity — training memory, BitOPs / MACs, size, step timing — checked
against hand counts and against the call sites that read them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from craftlab.measure.memory import (
    SavedTensorMeter,
    TrainingMemory,
    measure_step,
    measure_training_memory,
    optimizer_state_bytes,
)

# ------------------------------------------------------------------------------------------------ memory


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def test_peak_saved_bytes_is_the_most_alive_at_once_not_the_sum_over_passes():
    """Two forward/backward passes in one step: the first pass's saved tensors are freed by its backward, so the
    peak is one pass's (the larger), while the meter's traffic total is both."""
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x1, x2 = torch.randn(7, 6), torch.randn(3, 6)

    def step():
        net(x1).square().sum().backward()
        net(x2).square().sum().backward()
        opt.step()

    one = lambda b: 4 * (b * 6 + b * 5 + b * 3)  # noqa: E731 x, tanh's output, the output (square saves it)
    with SavedTensorMeter(net) as meter:
        step()
    assert meter.peak_bytes == one(7) and meter.total_bytes == one(7) + one(3) and meter.current_bytes == 0
    mem = measure_training_memory(net, opt, step)
    assert mem.saved_bytes == one(7)
    assert mem.optimizer_bytes == 0 and mem.input_bytes == 0  # plain SGD keeps no state; no input named


def test_the_two_entry_points_count_one_step_alike():
    """The adaptation papers' entry (a loss function) and the supernet's (a step function) give one number."""
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    a, b = _mlp(), _mlp()
    opt_a, opt_b = torch.optim.AdamW(a.parameters()), torch.optim.AdamW(b.parameters())
    mem_a = measure_step(lambda: F.cross_entropy(a(x), y), a, opt_a, inputs=[x])

    def step():
        opt_b.zero_grad(set_to_none=True)
        F.cross_entropy(b(x), y).backward()
        opt_b.step()

    mem_b = measure_training_memory(b, opt_b, step, inputs=[x])
    assert mem_a == mem_b
    n = sum(p.numel() for p in a.parameters())
    assert mem_a.optimizer_bytes == 2 * 4 * n + 4 * 4 == optimizer_state_bytes(opt_a)  # + one step counter a tensor
    assert mem_a.input_bytes == 4 * 7 * 6 and mem_a.total_params == n and mem_a.weights_bytes == 4 * n
    assert mem_a.total_bytes == mem_a.saved_bytes + mem_a.grad_bytes + mem_a.optimizer_bytes + mem_a.input_bytes
    assert all(p.grad is None for p in a.parameters())  # measure_step clears the gradients after counting


def test_sam_holds_its_base_state_and_one_copy_of_the_weights():
    from craftlab.train.sam import SAM

    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    net = _mlp()
    sam = SAM(net.parameters(), torch.optim.AdamW, rho=0.05)
    mem = measure_step(lambda: F.cross_entropy(net(x), y), net, sam)
    n = sum(p.numel() for p in net.parameters())
    assert mem.optimizer_bytes == 2 * 4 * n + 4 * 4 + 4 * n  # AdamW's state + the weights' copy between passes
    # the two passes do not overlap: one pass's saved tensors (hand count as in test_adapt), not their sum
    assert mem.saved_bytes == 4 * (7 * 6 + 7 * 5 + 7 * 3) + 8 * 7 + 4


def test_buffers_and_frozen_weights_are_resident_not_saved():
    bn = nn.BatchNorm1d(6).eval().requires_grad_(False)  # eval: its running statistics (buffers) are read
    head = nn.Linear(6, 3)
    x = torch.randn(4, 6)
    mem = measure_step(lambda: head(bn(x)).sum(), head, torch.optim.SGD(head.parameters(), lr=0.1), frozen=[bn])
    assert mem.weights_bytes == 4 * (6 * 3 + 3) + 4 * (6 + 6 + 6 + 6) + 8  # head, BN's affine + stats, its counter
    assert mem.saved_bytes == 4 * 4 * 6  # only the head's input: BN's weights and statistics are resident
    assert mem.trainable_params == 21 and mem.total_params == 21 + 12


def test_training_memory_is_one_dataclass_with_both_spellings_of_its_dict():
    m = TrainingMemory(saved_bytes=3, grad_bytes=2, optimizer_bytes=1, input_bytes=4, weights_bytes=0,
                       trainable_params=1, total_params=2)
    assert m.as_dict() == m.to_dict() and m.as_dict()["total_bytes"] == 10
    assert "parameters trainable" in m.summary()
    with pytest.raises(AttributeError):
        m.saved_bytes = 5  # frozen: a measurement is not edited


# ------------------------------------------------------------------------------------------ BitOPs and size


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 4, 3, stride=2, groups=2),
                         nn.Flatten(), nn.Linear(16, 3))


def test_forward_macs_and_bitops_equal_a_hand_count():
    from craftlab.measure.bitops import FP_BITS, bitops, forward_macs

    net = _cnn().train()
    x = torch.randn(5, 1, 5, 5)  # the first image only
    counts = forward_macs(net, x, layers=[net[0], net[2], net[4]])
    # conv 1: 2 x 5 x 5 outputs x (1 x 3 x 3) inputs; conv 2 (2 groups, stride 2, no padding): 4 x 2 x 2 outputs
    # x (2 / 2 x 3 x 3); the Linear: 3 outputs x 16 inputs
    hand = {net[0]: 2 * 25 * 9, net[2]: 4 * 2 * 2 * 1 * 9, net[4]: 3 * 16}
    assert counts == hand
    assert net.training, "the caller's mode is restored"
    assert bitops(counts[net[2]], 4, 8) == 144 * 32 and bitops(12, None, None) == 12 * FP_BITS * FP_BITS
    twice = nn.Linear(3, 3)
    assert forward_macs(nn.Sequential(twice, twice), torch.zeros(1, 3), layers=[twice]) == {twice: 18}


def test_model_stats_reads_the_measures_on_a_quantized_model():
    """``craftlab.model_stats`` (the compression pipeline's, the sweep's and the composition study's size and
    BitOPs) equals a hand count from the layer shapes and the bits quantize set."""
    import craftlab
    from craftlab.compression.quant import QuantConv2d, QuantLinear

    net = _cnn()
    calib = [(torch.randn(8, 1, 5, 5), torch.zeros(8, dtype=torch.long))]
    q = craftlab.quantize(net, 4, 8, calib=calib, targets=["2"])
    assert isinstance(q[2], QuantConv2d) and not isinstance(q[4], QuantLinear)
    stats = craftlab.model_stats(q, torch.randn(1, 1, 5, 5))
    assert stats["macs"] == 450 + 144 + 48
    assert stats["bitops"] == (450 + 48) * 32 * 32 + 144 * 4 * 8
    n = {name: p.numel() for name, p in net.named_parameters()}
    assert stats["size_bits"] == sum(n.values()) * 32 - n["2.weight"] * (32 - 4)
    assert stats["size_mb"] == stats["size_bits"] / 8 / 2**20 and stats["params"] == sum(n.values())


def test_supernet_costs_read_the_same_measures():
    """The supernet's BitOPs of the largest subnet = the measures on its export (Conv2d/Linear) + the attention
    matmuls at the qkv activation bits; its FP32 reference counts every MAC at 32 x 32."""
    from timm.models.vision_transformer import VisionTransformer

    from craftlab.compression.quant import model_stats
    from craftlab.measure.bitops import attention_macs, bitops
    from craftlab.supernet.build import build_supernet

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2,
                            mlp_ratio=2.0).eval()
    calib = [(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    sn = build_supernet(vit, calib, lora=None, step_init="minmax", input_size=(1, 8, 8), w_bits=(4, 8), a_bits=(8,))
    cfg = sn.space.largest()
    cost = sn.cost(cfg)
    attn = attention_macs(2, 5, 4)  # 4 patches + the class token, head_dim 8 / 2
    assert cost["macs_attention"] == attn and cost["bitops_attention"] == bitops(attn, 8, 8)
    plain = sn.export(cfg)
    assert cost["bitops"] == model_stats(plain, torch.zeros(1, 1, 8, 8))["bitops"] + bitops(attn, 8, 8)
    assert sn.references()["FP32"] == bitops(cost["macs"] + attn, None, None)


# ------------------------------------------------------------------------------------------------ timing


def test_time_interleaved_runs_the_arms_in_turn_skips_warmup_and_takes_the_median():
    from craftlab.measure.timing import time_interleaved

    now, order = [0.0], []
    cost = {"a": [5.0, 1.0, 3.0, 2.0], "b": [7.0, 4.0, 4.0, 9.0]}  # seconds of each call, the first is warm-up

    def make(label):
        def fn():
            order.append(label)
            now[0] += cost[label][sum(1 for o in order if o == label) - 1]
        return fn

    t = time_interleaved({"a": make("a"), "b": make("b")}, reps=3, warmup=1, threads=1, clock=lambda: now[0])
    assert order == ["a", "b"] * 4
    assert t.samples == {"a": [1.0, 3.0, 2.0], "b": [4.0, 4.0, 9.0]}
    assert t.median() == {"a": 2.0, "b": 4.0}


def test_time_interleaved_restores_the_threads_and_leaves_the_policy_alone():
    from craftlab import threads
    from craftlab.measure.timing import time_interleaved

    before, explicit = torch.get_num_threads(), list(threads._EXPLICIT)
    seen = []
    t = time_interleaved({"x": lambda: seen.append(torch.get_num_threads())}, reps=2, warmup=0, threads=1)
    assert seen == [1, 1] and t.threads == 1
    assert torch.get_num_threads() == before and threads._EXPLICIT == explicit
    with pytest.raises(ValueError, match="reps"):
        time_interleaved({"x": lambda: None}, reps=0)


def test_trainable_params_count_the_trained_net_not_the_frozen_backbone():
    """A side method's step runs a frozen backbone whose weights still have requires_grad: they are resident and
    counted in total_params, never as trainable."""
    backbone, head = nn.Linear(4, 4), nn.Linear(4, 2)  # 20 and 10 parameters
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    opt = torch.optim.AdamW(head.parameters())
    mem = measure_step(lambda: F.cross_entropy(head(backbone(x).detach()), y), head, opt, frozen=[backbone])
    assert mem.trainable_params == 10 and mem.total_params == 30
