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
