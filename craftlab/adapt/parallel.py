"""Training small networks on frozen features: one at a time (:func:`fit_one`), or K at once (:func:`fit_parallel`).

Both read batches from a :class:`Source` (cached feature tensors, or a backbone run per batch), in the order of
``DataBundle.loader("train", shuffle=True, seed=seed)``, with AdamW on the same cosine-per-step schedule as
:func:`craftlab.finetune`.

K-way: networks of the same shape are stacked (``torch.func.stack_module_state``) and run as one with
``torch.func.vmap`` over ``functional_call``; networks of different shapes (ranks) form separate stacks that read
the same batch. So the backbone runs once per batch for all K, and each network's loss, gradients and AdamW update
are its own (a vectorised AdamW with a learning rate and weight decay per network): K-way training gives the
parameters of K separate :func:`fit_one` runs with the same seeds, up to float rounding.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class Source:
    """``n`` examples; ``fetch(indices) -> (inputs, labels)`` for a batch of indices (a LongTensor)."""

    n: int
    fetch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    backbone_passes: int = 0  # batches for which fetch ran the backbone (online sources count them)

    @classmethod
    def tensors(cls, x: torch.Tensor, y: torch.Tensor) -> Source:
        """Cached inputs: rows of `x` (already tapped / gathered features) and labels `y`."""
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        return cls(len(y), lambda idx: (x[idx], y[idx]))

    def batches(self, batch_size: int):
        """Unshuffled batches, in order (for evaluation)."""
        for i in range(0, self.n, batch_size):
            yield self.fetch(torch.arange(i, min(i + batch_size, self.n)))


def batch_order(n: int, batch_size: int, seed: int) -> DataLoader:
    """A loader of index batches in exactly the order of ``DataBundle.loader("train", batch_size, shuffle=True,
    seed=seed)`` over a split of `n` examples (same sampler, same generator draws)."""
    return DataLoader(torch.arange(n), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def lr_factor(step: int, total: int, schedule: str = "cosine") -> float:
    """The schedule of :func:`craftlab.finetune` (no warm-up): cosine per step to 0, or constant."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


@dataclass
class FitResult:
    """One trained network: ``module`` (eval mode), per-epoch ``history``, the ``config`` it trained with."""

    module: nn.Module
    history: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def train_time_s(self) -> float:
        return sum(h["time_s"] for h in self.history)


def _check(epochs: int, batch_size: int, train: Source) -> None:
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if train.n < 1:
        raise ValueError("no training examples")


@torch.no_grad()
def evaluate_source(module: nn.Module, source: Source, batch_size: int = 256) -> dict[str, float]:
    """``accuracy``, mean cross-entropy ``loss`` and ``n`` of one network on a source (eval mode, restored)."""
    was = module.training
    module.eval()
    dev = next(module.parameters()).device
    correct, loss, n = 0, 0.0, 0
    try:
        for x, y in source.batches(batch_size):
            logits = module(x.to(dev)).float()
            y = y.to(dev)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    finally:
        module.train(was)
    return {"accuracy": correct / n, "loss": loss / n, "n": n}


def fit_one(module: nn.Module, train: Source, val: Source | None = None, epochs: int = 8, lr: float = 1e-3,
            weight_decay: float = 0.05, batch_size: int = 64, seed: int = 0, schedule: str = "cosine",
            callback: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Train `module` (in place) with ``torch.optim.AdamW`` on `train`; `val` is evaluated after each epoch.

    >>> res = fit_one(LinearProbe(64, 10), Source.tensors(feats.pooled, feats.y), epochs=4)  # doctest: +SKIP
    """
    _check(epochs, batch_size, train)
    dev = next(module.parameters()).device
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order = batch_order(train.n, batch_size, seed)
    total = epochs * len(order)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, schedule))
    history = []
    for epoch in range(epochs):
        module.train()
        t0 = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for idx in order:
            x, y = train.fetch(idx)
            x, y = x.to(dev), y.to(dev)
            loss = F.cross_entropy(module(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "time_s": time.perf_counter() - t0}
        if val is not None:
            v = evaluate_source(module, val)
            rec.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        history.append(rec)
        if callback is not None:
            callback(rec)
    module.eval()
    return FitResult(module, history, {"lr": lr, "weight_decay": weight_decay, "epochs": epochs,
                                       "batch_size": batch_size, "seed": seed, "schedule": schedule})


class _Stack:
    """Same-shaped networks as one: stacked parameters, a vmapped forward, a vectorised AdamW."""

    def __init__(self, members: list[int], modules: list[nn.Module], lrs: Sequence[float], wds: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        from torch.func import functional_call, stack_module_state, vmap

        self.members = members
        mods = [modules[i] for i in members]
        self.template = copy.deepcopy(mods[0])
        params, buffers = stack_module_state(mods)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers = buffers
        base = copy.deepcopy(mods[0]).to("meta")
        self.forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
        first = next(iter(self.params.values()))
        self.lr = torch.tensor([float(lrs[i]) for i in members], device=first.device, dtype=torch.float64)
        self.wd = torch.tensor([float(wds[i]) for i in members], device=first.device, dtype=torch.float64)
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in self.params.items()}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.params, self.buffers, x)  # (K, B, C)

    @torch.no_grad()
    def step(self, factor: float) -> None:
        """One AdamW step (torch's formula, decoupled weight decay) with lr_k · factor for member k."""
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2_sqrt = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
        for k, p in self.params.items():
            shape = (-1,) + (1,) * (p.ndim - 1)
            lr = self.lr * factor  # in float64, as torch computes its python-float hyper-parameters
            decay, step_size = (1 - lr * self.wd).to(p.dtype).view(shape), (lr / bc1).to(p.dtype).view(shape)
            g = p.grad
            p.mul_(decay)
            self.m[k].lerp_(g, 1 - b1)
            self.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.v[k].sqrt() / bc2_sqrt).add_(self.eps)
            p.sub_((self.m[k] / denom) * step_size)
            p.grad = None

    def unstack(self) -> list[nn.Module]:
        out = []
        for j in range(len(self.members)):
            mod = copy.deepcopy(self.template)
            mod.load_state_dict({**{k: v[j].detach() for k, v in self.params.items()},
                                 **{k: v[j] for k, v in self.buffers.items()}})
            out.append(mod.eval())
        return out


def _signature(module: nn.Module) -> tuple:
    return (type(module).__name__, tuple((n, tuple(p.shape)) for n, p in module.named_parameters()),
            repr(module))


@torch.no_grad()
def _evaluate_stacks(stacks: list[_Stack], source: Source, k: int, dev: torch.device,
                     batch_size: int = 256) -> list[dict[str, float]]:
    correct, loss = torch.zeros(k), torch.zeros(k)
    n = 0
    for x, y in source.batches(batch_size):
        x, y = x.to(dev), y.to(dev)
        for st in stacks:
            logits = st(x).float()
            ce = F.cross_entropy(logits.permute(1, 2, 0), y[:, None].expand(-1, len(st.members)),
                                 reduction="none").sum(0)  # (k,): each network's summed loss
            loss[st.members] += ce.cpu()
            correct[st.members] += (logits.argmax(-1) == y).sum(1).float().cpu()
        n += len(y)
    return [{"accuracy": float(correct[i]) / n, "loss": float(loss[i]) / n} for i in range(k)]


def fit_parallel(modules: Sequence[nn.Module], train: Source, val: Source | None = None, epochs: int = 8,
                 lrs: Sequence[float] | float = 1e-3, weight_decays: Sequence[float] | float = 0.05,
                 batch_size: int = 64, seed: int = 0, schedule: str = "cosine",
                 callback: Callable[[dict[str, Any]], None] | None = None) -> list[FitResult]:
    """Train K networks at once on the same batches (one :meth:`Source.fetch` per batch for all K).

    Args:
        modules: the K networks (not changed: trained copies are returned). Same-shaped ones share a stack.
        lrs, weight_decays: one per network, or one for all.
        seed: the data order, shared by all K (each network's initialisation is its own).

    Returns:
        K :class:`FitResult`, in the order of `modules`, with per-epoch ``val_accuracy`` / ``val_loss`` when
        `val` is given; ``time_s`` of each epoch is the wall time of the whole K-way epoch.

    >>> nets = [LASTSideNet(64, 10, m=2, rank=r) for r in (4, 8)]                     # doctest: +SKIP
    >>> res = fit_parallel(nets, train, val, lrs=[1e-3, 3e-3])                        # doctest: +SKIP
    """
    modules = list(modules)
    if len(modules) < 1:
        raise ValueError(f"K-way training needs K >= 1 networks, got K = {len(modules)}")
    _check(epochs, batch_size, train)
    K = len(modules)
    lrs = [lrs] * K if isinstance(lrs, (int, float)) else list(lrs)
    wds = [weight_decays] * K if isinstance(weight_decays, (int, float)) else list(weight_decays)
    if len(lrs) != K or len(wds) != K:
        raise ValueError(f"give one learning rate and one weight decay per network (K = {K}), "
                         f"got {len(lrs)} and {len(wds)}")
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(modules):
        groups.setdefault(_signature(m), []).append(i)
    stacks = [_Stack(members, modules, lrs, wds) for members in groups.values()]
    dev = next(modules[0].parameters()).device
    order = batch_order(train.n, batch_size, seed)
    total, step = epochs * len(order), 0
    histories: list[list[dict[str, float]]] = [[] for _ in range(K)]
    for epoch in range(epochs):
        t0 = time.perf_counter()
        loss_sum, seen = torch.zeros(K), 0
        for idx in order:
            x, y = train.fetch(idx)  # one backbone pass (online) or one cache read for all K networks
            x, y = x.to(dev), y.to(dev)
            factor = lr_factor(step, total, schedule)
            for st in stacks:
                logits = st(x)  # (k, B, C)
                per_net = F.cross_entropy(logits.permute(1, 2, 0), y[:, None].expand(-1, len(st.members)),
                                          reduction="none").mean(0)  # each network's own mean loss
                per_net.sum().backward()  # networks share no parameter: each gets its own gradient
                st.step(factor)
                loss_sum[st.members] += per_net.detach().cpu() * len(y)
            step += 1
            seen += len(y)
        elapsed = time.perf_counter() - t0
        vals = _evaluate_stacks(stacks, val, K, dev) if val is not None else None
        for i in range(K):
            rec = {"epoch": epoch + 1, "train_loss": float(loss_sum[i]) / seen, "time_s": elapsed}
            if vals is not None:
                rec.update(val_loss=vals[i]["loss"], val_accuracy=vals[i]["accuracy"])
            histories[i].append(rec)
        if callback is not None:
            callback({"epoch": epoch + 1, "time_s": elapsed,
                      "val_accuracy": [h[-1].get("val_accuracy") for h in histories]})
    trained: dict[int, nn.Module] = {}
    for st in stacks:
        trained.update(zip(st.members, st.unstack()))
    return [FitResult(trained[i], histories[i], {"lr": lrs[i], "weight_decay": wds[i], "epochs": epochs,
                                                 "batch_size": batch_size, "seed": seed, "schedule": schedule,
                                                 "k_way": K})
            for i in range(K)]
