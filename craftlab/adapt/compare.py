"""Methods side by side: accuracy over seeds, trainable parameters, training memory, time per epoch, bytes per
image (:func:`compare_methods`), the memory of one training step (:func:`method_memory`), and the K-way
speed-up (:func:`kway_speedup`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataBundle
from . import miet as _miet
from .memory import TrainingMemory, measure_step
from .parallel import fit_one, fit_parallel
from .recipes import DEFAULT_LR, DEFAULT_RANK, SIDE_METHODS, adapt_model, build_side, side_spec, sources
from .taps import depth, tap_batch

LORA, LAST, MIET = "LoRA (r=4, qkv)", "LAST (g=1, m=4)", "MIET (k=4)"
ARMS: dict[str, dict[str, Any]] = {
    "linear probe": {"method": "linear", "cache": "memory"},
    LORA: {"method": "lora"},
    "full": {"method": "full"},
    "full + SAM": {"method": "full", "sam_rho": 0.05},
    LAST: {"method": "last", "gap": 1},
    "LAST (g=2, m=2)": {"method": "last", "gap": 2},
    MIET: {"method": "miet", "cache": "memory"},
    "MIET (k=4, 8-bit)": {"method": "miet", "cache": "memory", "bits": 8},
    "MIET (k=4, 4-bit)": {"method": "miet", "cache": "memory", "bits": 4},
}
"""THE table of adaptation arms: label → :func:`~craftlab.adapt.recipes.adapt_model` arguments. The app's Adapt tab,
the adaptation benchmark, the curves, the claims ledger and notebook 06 all use these labels (on the zoo
vit-tiny, 4 blocks: a side block every g = 1 block gives m = 4 of them, and MIET gathers k = 4 blocks). The linear
probe and MIET's device train on features received (or tapped) once; LAST runs the frozen backbone on every batch,
as LoRA and full fine-tuning do."""
MAIN_ARMS = ("linear probe", LORA, "full", "full + SAM", LAST, MIET)
"""The arms :func:`compare_methods` runs by default (the edge variants are extra)."""


@dataclass
class Step:
    """One method's training step on a fixed batch: ``loss_fn`` (forward), the trained ``net``, its
    ``optimizer`` and the ``frozen`` modules the forward also runs (a side method's backbone)."""

    loss_fn: Callable[[], torch.Tensor]
    net: nn.Module
    optimizer: torch.optim.Optimizer
    frozen: list[nn.Module]
    inputs: list[torch.Tensor] = field(default_factory=list)

    def run(self) -> float:
        """One plain training step (SAM: both passes); returns the loss."""
        from ..train.sam import SAM

        loss = self.loss_fn()
        loss.backward()
        if isinstance(self.optimizer, SAM):
            self.optimizer.first_step(zero_grad=True)
            self.loss_fn().backward()
            self.optimizer.second_step(zero_grad=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def memory(self) -> TrainingMemory:
        """What one step holds (:func:`~craftlab.adapt.memory.measure_step`; it trains one step)."""
        return measure_step(self.loss_fn, self.net, self.optimizer, frozen=self.frozen, inputs=self.inputs)


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "last", *,
                  rank: int = DEFAULT_RANK, heads: int = 1, gap: int = 1, k: int | None = None, lora_rank: int = 4,
                  sam_rho: float = 0.0, num_classes: int | None = None, lr: float = 1e-3) -> Step:
    """A :class:`Step` of `method` on the batch (x, y) with AdamW (SAM when ``sam_rho > 0``). Side methods tap
    the backbone inside the step (under no grad); LoRA and full fine-tuning train a copy: `model` is not changed.

    >>> training_step(model, x, y, "last").memory().total_bytes  # doctest: +SKIP
    """
    num_classes = num_classes or int(y.max()) + 1
    if method in SIDE_METHODS:
        taps, view = side_spec(model, method, gap=gap, k=k, rank=rank, heads=heads)
        side = build_side(model, method, taps, num_classes, rank=rank, heads=heads).to(x.device).train()
        tapped = tap_batch(model, x, taps)  # the side network's input: held for the step (counted as input bytes)
        return Step(lambda: F.cross_entropy(side(view(*tapped)), y), side,
                    torch.optim.AdamW(side.parameters(), lr=lr), [model], list(tapped))
    if method == "lora":
        from .baselines import lora_model

        net = lora_model(model, rank=lora_rank).train()
    elif method == "full":
        net = copy.deepcopy(model).train()
    else:
        raise ValueError(f"unknown method {method!r}")
    params = [p for p in net.parameters() if p.requires_grad]
    if sam_rho > 0:
        from ..train.sam import SAM

        opt = SAM(params, torch.optim.AdamW, rho=sam_rho, model=net, lr=lr)
    else:
        opt = torch.optim.AdamW(params, lr=lr)
    return Step(lambda: F.cross_entropy(net(x), y), net, opt, [], [x])


def method_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "last",
                  **kwargs: Any) -> TrainingMemory:
    """What one training step of `method` on (x, y) holds: ``training_step(...).memory()``."""
    return training_step(model, x, y, method, **kwargs).memory()


def _memory_kwargs(kw: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("rank", "heads", "gap", "k", "lora_rank", "sam_rho")
    return {key: kw[key] for key in keys if key in kw}


def compare_methods(model: nn.Module, data: DataBundle, arms: Mapping[str, Mapping[str, Any]] | None = None,
                    seeds: Sequence[int] = (0, 1, 2), epochs: int = 8, gap: int = 1, k: int | None = None,
                    progress: bool = False, **common: Any) -> Any:
    """Every arm (default: the :data:`MAIN_ARMS` of :data:`ARMS`) at every seed, on the same data and budget: a
    DataFrame with one row per
    (arm, seed): ``arm``, ``method``, ``seed``, ``val_accuracy``, ``test_accuracy``, ``trainable_params``,
    ``time_per_epoch_s``, and per arm (measured once, on one training batch) ``saved_bytes``, ``grad_bytes``,
    ``optimizer_bytes``, ``input_bytes`` (the image batch, or the tapped features a side method trains on),
    ``memory_bytes`` (their sum) and ``bytes_per_image`` (what it sends per image;
    fine-tuning: the image itself).

    >>> df = compare_methods(craftlab.create_model("vit-tiny", num_classes=10), data, seeds=[0, 1, 2])  # doctest: +SKIP
    """
    import pandas as pd

    arms = dict({k: ARMS[k] for k in MAIN_ARMS} if arms is None else arms)
    x, y = next(iter(data.loader("train", shuffle=False)))
    rows = []
    for label, kw in arms.items():
        kw = {"gap": gap, "k": k, **common, **kw}
        method = kw.pop("method")
        if method != "last":
            kw.pop("gap", None)
        if method != "miet":
            kw.pop("k", None)
        mem = method_memory(model, x, y, method, num_classes=data.num_classes, **_memory_kwargs(kw)).as_dict()
        per_image = _sent_per_image(model, x[0], method, kw)
        for seed in seeds:
            t0 = time.perf_counter()
            res = adapt_model(model, data, method, epochs=epochs, seed=seed, **kw)
            if progress:
                print(f"  {label} seed {seed}: test {res.metrics['test_accuracy']:.3f} "
                      f"({time.perf_counter() - t0:.1f} s)")
            rows.append({"arm": label, "method": method, "seed": seed, **res.metrics,
                         "trainable_params": res.trainable_params, "time_per_epoch_s": res.time_per_epoch_s,
                         "saved_bytes": mem["saved_bytes"], "grad_bytes": mem["grad_bytes"],
                         "optimizer_bytes": mem["optimizer_bytes"], "input_bytes": mem["input_bytes"],
                         "memory_bytes": mem["total_bytes"],
                         "bytes_per_image": per_image, "lr": res.config["lr"]})
    return pd.DataFrame(rows)


def _sent_per_image(model: nn.Module, image: torch.Tensor, method: str, kw: Mapping[str, Any]) -> int:
    """Bytes per image `method` sends to a device (fine-tuning there: the image)."""
    bits = kw.get("bits")
    k = depth(model) if kw.get("k") is None else kw["k"]
    sent = {t.method: t.per_image_bytes for t in _miet.transfers(model, image, k, kw.get("gap", 1), bits=(bits,))}
    key = {"linear": "linear probe", "miet": "MIET" if bits is None else f"MIET {bits}-bit", "last": "LAST"}
    return sent[key.get(method, "full fine-tuning")]


def kway_speedup(model: nn.Module, data: DataBundle, ks: Sequence[int] = (1, 4, 8, 16), method: str = "last",
                 epochs: int = 1, cache: str | None = None, rank: int = DEFAULT_RANK, gap: int = 1,
                 lrs: Sequence[float] | None = None, seed: int = 0) -> Any:
    """Wall time of training K side networks (learning rates spread over `lrs`, default DEFAULT_LR × 0.1 … 3)
    K-way in one go vs one after another (:func:`~craftlab.adapt.parallel.fit_one` each, its own backbone
    passes when ``cache=None``): a DataFrame ``K``, ``parallel_s``, ``sequential_s``, ``speedup``,
    ``backbone_passes_parallel``, ``backbone_passes_sequential``."""
    import numpy as np
    import pandas as pd

    if any(kk < 1 for kk in ks):
        raise ValueError(f"K must be >= 1, got {list(ks)}")
    taps, view = side_spec(model, method, gap=gap, rank=rank)
    rows = []
    for K in ks:
        grid = list(lrs) if lrs is not None else list(DEFAULT_LR[method] * np.geomspace(0.1, 3, K))
        grid = (grid * K)[:K]
        nets = [build_side(model, method, taps, data.num_classes, rank=rank, seed=seed + i) for i in range(K)]
        src = sources(model, data, taps, view, cache, torch.device("cpu"), splits=("train",))["train"]
        t0 = time.perf_counter()
        fit_parallel(nets, src, epochs=epochs, lrs=grid, batch_size=data.batch_size, seed=seed)
        par, par_passes = time.perf_counter() - t0, src.backbone_passes
        seq, seq_passes = 0.0, 0
        for net, lr in zip(nets, grid):
            src = sources(model, data, taps, view, cache, torch.device("cpu"), splits=("train",))["train"]
            t0 = time.perf_counter()
            fit_one(copy.deepcopy(net), src, epochs=epochs, lr=lr, batch_size=data.batch_size, seed=seed)
            seq += time.perf_counter() - t0
            seq_passes += src.backbone_passes
        rows.append({"K": K, "parallel_s": par, "sequential_s": seq, "speedup": seq / par,
                     "backbone_passes_parallel": par_passes, "backbone_passes_sequential": seq_passes})
    return pd.DataFrame(rows)
