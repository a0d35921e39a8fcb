"""Supernet training: the sandwich rule with in-place distillation, progressive bit-widths, LoRA or full weights.

Each step (BigNAS / AttentiveNAS's sandwich rule) clears the gradients, then runs the **largest** subnet on the
labels (cross-entropy), keeps its logits as the teacher, runs ``n_random`` random subnets and the **smallest**
one against the teacher's soft labels (in-place distillation: ``-Σ softmax(z_T)·log softmax(z)``, no label term),
back-propagating each one, and makes **one** optimizer step on the summed gradients.

**Progressive** training (our reconstruction of the paper's "progressive training strategy"; its schedule is not
published): training is cut into ``n_stages`` equal parts; stage k samples only the top ⌈(k+1)/n · |candidates|⌉
weight and activation bit-widths, so W8/W6 are trained first and W2 joins last (:func:`progressive_stages`).

What trains: with LoRA, the adapters and the LSQ step sizes (the base weights are frozen); without
(``lora=None`` at build), every weight and the step sizes. AdamW, cosine schedule, no weight decay.

Example::

    sn = build_supernet(model, data.calib, lora="per-bit")
    res = train_supernet(sn, data, epochs=6)         # a new, trained supernet in res.supernet
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data import DataBundle
from ..evaluation import evaluate
from ..measure.memory import TrainingMemory, measure_training_memory
from ..train.finetune import eval_loader
from .model import Supernet
from .space import SubnetConfig


def progressive_stages(space: Any, n_stages: int = 3) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(allowed weight bits, allowed activation bits) of each stage: the top ⌈(k+1)/n⌉ fraction of each set.

    >>> from craftlab.supernet.space import SearchSpace
    >>> progressive_stages(SearchSpace(("l",), (None,)), 3)
    [((6, 8), (8,)), ((3, 4, 6, 8), (6, 8)), ((2, 3, 4, 6, 8), (4, 6, 8))]
    """
    if not isinstance(n_stages, int) or n_stages < 1:
        raise ValueError(f"n_stages must be a positive integer, got {n_stages!r}")
    top = lambda c, k: tuple(sorted(c)[len(c) - math.ceil((k + 1) / n_stages * len(c)):])
    return [(top(space.w_bits, k), top(space.a_bits, k)) for k in range(n_stages)]


def soft_cross_entropy(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``-Σ softmax(teacher)·log softmax(logits)``, averaged over the batch (in-place distillation)."""
    return -(teacher.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


def sandwich_configs(supernet: Supernet, rng: random.Random, n_random: int = 2,
                     w_allowed: tuple[int, ...] | None = None,
                     a_allowed: tuple[int, ...] | None = None) -> list[SubnetConfig]:
    """[largest, n_random random ones, smallest] of the allowed bits (the sandwich rule's subnets)."""
    space = supernet.space
    rand = [space.sample(rng, w_allowed, a_allowed) for _ in range(n_random)]
    return [space.largest(w_allowed, a_allowed), *rand, space.smallest(w_allowed, a_allowed)]


def sandwich_step(supernet: Supernet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  configs: list[SubnetConfig], distill: bool = True) -> list[float]:
    """One sandwich-rule step on a batch: ``configs[0]`` (the largest) on the labels, the others distilled from
    it (or on the labels with ``distill=False``); one optimizer step. Returns each subnet's loss. The gradients
    are left in place (for memory accounting); the supernet is set back to its configuration."""
    optimizer.zero_grad(set_to_none=True)
    losses, teacher = [], None
    with supernet.using(configs[0]):
        for i, cfg in enumerate(configs):
            supernet.set_config(cfg)
            logits = supernet(x)
            loss = F.cross_entropy(logits, y) if i == 0 or not distill else soft_cross_entropy(logits, teacher)
            if i == 0:
                teacher = logits.detach()
            loss.backward()
            losses.append(float(loss.detach()))
    optimizer.step()
    return losses


@dataclass
class SupernetTrainResult:
    """The trained supernet (a new object), per-epoch history, training memory of the first step, arguments."""

    supernet: Supernet
    history: list[dict[str, Any]]
    config: dict[str, Any]
    memory: TrainingMemory | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def train_time_s(self) -> float:
        return sum(h["time_s"] for h in self.history)


def make_optimizer(supernet: Supernet, lr: float, weight_lr: float, step_lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable groups: LoRA at `lr`, step sizes at `step_lr`, weights at `weight_lr` (full-weight
    supernets; a trainable head of a LoRA supernet uses `lr`)."""
    groups = supernet.parameter_groups()
    w_lr = weight_lr if supernet.lora_mode is None else lr
    spec = [(groups["lora"], lr), (groups["steps"], step_lr), (groups["weights"], w_lr)]
    return torch.optim.AdamW([{"params": p, "lr": r, "base_lr": r} for p, r in spec if p], weight_decay=0.0)


def _check(data, epochs, n_random, lr, max_steps) -> None:
    if not isinstance(data, DataBundle):
        raise TypeError("data must be a craftlab DataBundle (see craftlab.load_data)")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random must be an integer >= 0, got {n_random!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be positive, got {lr!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")


def train_supernet(
    supernet: Supernet,
    data: DataBundle,
    *,
    epochs: int = 6,
    lr: float = 2e-3,
    weight_lr: float = 2e-4,
    step_lr: float = 1e-3,
    n_random: int = 2,
    progressive: bool = True,
    n_stages: int = 3,
    distill: bool = True,
    seed: int = 0,
    max_steps: int | None = None,
    evaluate_every_epoch: bool = True,
    measure_memory: bool = True,
    progress: bool = False,
) -> SupernetTrainResult:
    """Train a copy of `supernet` with the sandwich rule (the argument is not changed).

    Args:
        epochs: passes over ``data.train`` (seeded order); `max_steps` stops earlier (tests, memory probes).
        lr / weight_lr / step_lr: AdamW learning rates of LoRA (and a trainable head), of the weights of a
            full-weight supernet, of the LSQ step sizes (log-parametrized); cosine decay to 0.
        n_random: random subnets per step between the largest and the smallest.
        progressive: introduce lower bit-widths in `n_stages` stages (:func:`progressive_stages`).
        distill: in-place distillation from the largest subnet (else every subnet on the labels).
    Returns:
        :class:`SupernetTrainResult`; its history has, per epoch, the mean loss of the largest / smallest subnet,
        their validation accuracy, the allowed bits and the time.
    """
    _check(data, epochs, n_random, lr, max_steps)
    sn = copy.deepcopy(supernet)
    sn.train()
    opt = make_optimizer(sn, lr, weight_lr, step_lr)
    if not opt.param_groups:
        raise ValueError("this supernet has no trainable parameters")
    loader = data.loader("train", seed=seed)
    total = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    stages = progressive_stages(sn.space, n_stages) if progressive else [(sn.space.w_bits, sn.space.a_bits)]
    rng = random.Random(seed)
    device = next(sn.parameters()).device
    history: list[dict[str, Any]] = []
    memory, step = None, 0
    for epoch in range(epochs):
        t0, sums, n = time.perf_counter(), [0.0, 0.0], 0
        for x, y in loader:
            if step >= total:
                break
            w_allowed, a_allowed = stages[min(step * len(stages) // total, len(stages) - 1)]
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
            configs = sandwich_configs(sn, rng, n_random, w_allowed, a_allowed)
            x, y = x.to(device), y.to(device)
            if measure_memory and memory is None:
                out: list[list[float]] = []
                step_args = (sn, opt, x, y, configs, distill)
                memory = measure_training_memory(sn, opt, lambda a=step_args, o=out: o.append(sandwich_step(*a)))
                losses = out[0]
            else:
                losses = sandwich_step(sn, opt, x, y, configs, distill)
            sums[0], sums[1], n, step = sums[0] + losses[0], sums[1] + losses[-1], n + 1, step + 1
            if progress:
                print(f"  epoch {epoch + 1} step {step}/{total}: largest {losses[0]:.3f} smallest {losses[-1]:.3f}",
                      flush=True)
        opt.zero_grad(set_to_none=True)
        row = {"epoch": epoch + 1, "loss_largest": sums[0] / max(n, 1), "loss_smallest": sums[1] / max(n, 1),
               "w_bits": list(w_allowed), "a_bits": list(a_allowed), "steps": n, "time_s": time.perf_counter() - t0}
        if evaluate_every_epoch:
            val = eval_loader(data, "val")
            for tag, cfg in (("largest", sn.space.largest()), ("smallest", sn.space.smallest())):
                with sn.using(cfg):
                    row[f"val_accuracy_{tag}"] = evaluate(sn, val)["accuracy"]
        history.append(row)
        if step >= total:
            break
    sn.eval()
    sn.set_config(sn.space.largest())
    config = {"epochs": epochs, "lr": lr, "weight_lr": weight_lr, "step_lr": step_lr, "n_random": n_random,
              "progressive": progressive, "n_stages": n_stages, "distill": distill, "seed": seed,
              "max_steps": max_steps, "steps": step}
    return SupernetTrainResult(sn, history, config, memory)


def step_memory(supernet: Supernet, x: torch.Tensor, y: torch.Tensor, *, n_random: int = 0, seed: int = 0,
                lr: float = 2e-3, weight_lr: float = 2e-4, step_lr: float = 1e-3) -> TrainingMemory:
    """Training memory of one sandwich step (largest, `n_random` random, smallest subnet) on the batch (x, y), run
    on a copy of `supernet`: saved tensors (peak), gradients and AdamW state (:mod:`craftlab.measure.memory`).

    Example (a ViT-B-sized stand-in: random init, 224 px, batch 2)::

        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
        sn = build_supernet(vit, [x], step_init="minmax", lora="per-bit")
        step_memory(sn, x, y).summary()
    """
    sn = copy.deepcopy(supernet)
    sn.train()
    opt = make_optimizer(sn, lr, weight_lr, step_lr)
    configs = sandwich_configs(sn, random.Random(seed), n_random)
    return measure_training_memory(sn, opt, lambda: sandwich_step(sn, opt, x, y, configs))
