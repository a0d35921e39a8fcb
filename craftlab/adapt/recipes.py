"""One entry point for every way of adapting a pretrained ViT to a new task: :func:`adapt_model`, with any
method of the registry :data:`craftlab.registry.ADAPT_METHODS` (one module each in :mod:`craftlab.adapt.methods`):

- ``"last"``: LAST side-tuning (the backbone frozen and run without autograd; a side network of LSA blocks);
- ``"miet"``: MIET edge tuning (the device trains an adaptor on Gather*(k), optionally received quantized);
- ``"linear"``: a linear probe on the frozen pre-logits feature;
- ``"lora"``: LoRA adapters in the backbone (peft), back-propagating through it;
- ``"full"``: full fine-tuning (:func:`craftlab.finetune`; ``sam_rho > 0`` adds SAM).

Every method sees the same data in the same order (``seed``), the same AdamW with the same cosine schedule and
the same number of epochs. The caller's model is never changed. :func:`adapt_search` trains K side networks at once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from .._errors import unknown_name
from ..data import DataBundle
from ..models import SeededRNG
from ..registry import ADAPT_METHODS
from .methods import DEFAULT_LR, DEFAULT_RANK, AdaptMethod, FinetuneMethod, SideMethod, View
from .parallel import FitResult, Source, evaluate_source, fit_one, fit_parallel
from .side import trainable_parameters
from .taps import extract, tap_batch

__all__ = ["DEFAULT_LR", "DEFAULT_RANK", "METHODS", "SIDE_METHODS", "AdaptResult", "AdaptedModel", "SearchResult",
           "View", "adapt_model", "adapt_search", "build_side", "configure", "side_spec", "sources"]

METHODS = ("last", "miet", "linear", "lora", "full")
"""The built-in methods (the registry may hold more: ``ADAPT_METHODS.names()``)."""
SIDE_METHODS = ("last", "miet", "linear")
"""The built-in side methods (a registered one says so by subclassing :class:`~craftlab.adapt.methods.SideMethod`)."""


class AdaptedModel(nn.Module):
    """Images → the frozen backbone's taps (eval, no grad) → a view → the trained side network → logits.

    Only the side network is a registered submodule: ``parameters()`` are the trained ones, and ``train()`` /
    ``eval()`` never touch the backbone (the caller's model, referenced, not copied)."""

    def __init__(self, backbone: nn.Module, side: nn.Module, taps: Sequence[int], view: View):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        self.side, self.taps, self.view = side, tuple(taps), view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, pooled = tap_batch(self.backbone, x, self.taps)
        return self.side(self.view(z, pooled))


@dataclass
class AdaptResult:
    """An adapted model: ``model`` maps images to logits (:func:`craftlab.evaluate` works on it), ``history`` has
    one record per epoch (``time_s``: training wall time), ``metrics`` ``val_accuracy`` / ``test_accuracy``.

    Example::

        res = craftlab.adapt_model(model, data, "last", epochs=8)
        res.metrics["test_accuracy"], res.trainable_params, res.train_time_s
    """

    method: str
    model: nn.Module
    history: list[dict[str, float]]
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    trainable_params: int = 0

    @property
    def train_time_s(self) -> float:
        return sum(h["time_s"] for h in self.history)

    @property
    def time_per_epoch_s(self) -> float:
        return self.train_time_s / max(1, len(self.history))


def configure(method: str, **options: Any) -> AdaptMethod:
    """The config of registered `method` from `options` (its fields; the options every method takes and it does
    not use are left; unknown names and unknown methods are ValueErrors).

    >>> configure("miet", k=2, bits=8).label(depth=4)
    'MIET (k=2, 8-bit)'
    """
    if not isinstance(method, str) or method not in ADAPT_METHODS:
        raise unknown_name("adaptation method", method, ADAPT_METHODS.names())
    return ADAPT_METHODS.get(method).configure(options)


def _check_common(model: Any, data: Any, method: str) -> None:
    if not isinstance(method, str) or method not in ADAPT_METHODS:
        raise unknown_name("adaptation method", method, ADAPT_METHODS.names())
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise TypeError("data must be a craftlab DataBundle (see craftlab.load_data / craftlab.from_tensors)")


def _side(method: str, **options: Any) -> SideMethod:
    cfg = configure(method, **options)
    if not isinstance(cfg, SideMethod):
        raise ValueError(f"{method!r} trains through the backbone, not a side network on its taps")
    return cfg


def side_spec(model: nn.Module, method: str, *, gap: int = 1, k: int | None = None, bits: int | None = None,
              rank: int = DEFAULT_RANK, heads: int = 1) -> tuple[tuple[int, ...], View]:
    """The taps and the view a side method needs on `model`, every argument checked (k or g outside the depth,
    r ≥ d, unknown bits: ValueError): :meth:`SideMethod.spec <craftlab.adapt.methods.SideMethod.spec>`."""
    return _side(method, gap=gap, k=k, bits=bits, rank=rank, heads=heads).spec(model)


def build_side(model: nn.Module, method: str, taps: Sequence[int], num_classes: int, *, rank: int = DEFAULT_RANK,
               heads: int = 1, seed: int = 0) -> nn.Module:
    """A fresh side network for `method` (its initialisation drawn from a private stream seeded by `seed`)."""
    cfg = _side(method, rank=rank, heads=heads)
    with SeededRNG(seed):
        return cfg.build(model, tuple(taps), num_classes)


def sources(model: nn.Module, data: DataBundle, taps: Sequence[int], view: View, cache: str | Path | None,
            device: torch.device, splits: Sequence[str] = ("train", "val", "test")) -> dict[str, Source]:
    """A :class:`Source` per split. ``cache=None``: the backbone runs on every batch (``backbone_passes``
    counts them); ``"memory"``: features tapped once per split and kept; a folder: the on-disk feature cache.
    Features are tapped through each split's own transform: with a random training augmentation, a cache
    freezes its first draw (use ``cache=None`` to keep augmenting)."""
    out = {}
    for split in splits:
        dataset = getattr(data, f"{split}_set")
        if cache is None:
            out[split] = _online(model, dataset, taps, view, device)
        else:
            f = extract(model, data, split, taps, cache=None if cache == "memory" else cache, device=device)
            out[split] = Source.tensors(view(f.z, f.pooled), f.y)
    return out


def _online(model: nn.Module, dataset, taps: Sequence[int], view: View, device: torch.device) -> Source:
    src = Source(len(dataset), lambda idx: (torch.empty(0), torch.empty(0)))

    def fetch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = default_collate([dataset[i] for i in idx.tolist()])
        z, pooled = tap_batch(model, x.to(device), taps)
        src.backbone_passes += 1
        return view(z, pooled), torch.as_tensor(y)

    src.fetch = fetch
    return src


def _check_hyper(epochs: Any, lr: Any, weight_decay: Any, seed: Any) -> None:
    if not (isinstance(epochs, numbers.Integral) and not isinstance(epochs, bool) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    for name, v, strict in (("lr", lr, True), ("weight_decay", weight_decay, False)):
        if v is not None and not (isinstance(v, numbers.Real) and (v > 0 if strict else v >= 0)):
            raise ValueError(f"{name} must be a number {'> 0' if strict else '>= 0'}, got {v!r}")
    if not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def adapt_model(model: nn.Module, data: DataBundle, method: str = "last", *, epochs: int = 8,
                lr: float | None = None, weight_decay: float = 0.05, batch_size: int | None = None, seed: int = 0,
                rank: int = DEFAULT_RANK, heads: int = 1, gap: int = 1, k: int | None = None, bits: int | None = None,
                lora_rank: int = 4, sam_rho: float = 0.0, cache: str | Path | None = None,
                device: str | torch.device = "cpu",
                callback: Callable[[dict[str, float], nn.Module], None] | None = None,
                **options: Any) -> AdaptResult:
    """Adapt a pretrained ViT to `data` with a method of the registry; the caller's `model` is left unchanged.

    Args:
        method: ``"last"``, ``"miet"``, ``"linear"``, ``"lora"``, ``"full"`` or any registered one
            (:data:`craftlab.registry.ADAPT_METHODS`).
        epochs, lr (default :data:`DEFAULT_LR`), weight_decay, batch_size (default the bundle's), seed: the
            budget and recipe, shared by all methods (AdamW, cosine per step, data order from `seed`).
        rank, heads: LAST's / MIET's LSA modules (1 ≤ r < d). gap: LAST's g (one side block every g of the L
            blocks, g divides L). k: MIET's Gather*(k) = z_0 + … + z_k (default L). bits: MIET's transfer
            (None = float32, 8, 4, 2). lora_rank: LoRA's. sam_rho: full fine-tuning with SAM when > 0.
        cache: side methods: None (the backbone runs on every batch), ``"memory"`` (tapped once) or a folder
            (the on-disk feature cache, which refuses stale entries).
        callback: called after each epoch with a copy of the epoch's record and the image → logits model as
            trained so far (to evaluate it, e.g. on the test split: :func:`craftlab.studies.adapt.adapt_curves`;
            not to change it). Its time is not in the records' ``time_s``.
        options: a registered method's own options (its config fields) beyond the ones above.

    >>> res = adapt_model(craftlab.create_model("vit-tiny", num_classes=10), data, "last", gap=2)  # doctest: +SKIP
    >>> res.metrics["test_accuracy"], res.trainable_params                                       # doctest: +SKIP
    """
    _check_common(model, data, method)
    _check_hyper(epochs, lr, weight_decay, seed)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable (it gets each epoch's record and the model)")
    cfg = configure(method, rank=rank, heads=heads, gap=gap, k=k, bits=bits, lora_rank=lora_rank,
                    sam_rho=sam_rho, cache=cache, **options)
    lr = cfg.default_lr if lr is None else float(lr)
    bs = int(batch_size or data.batch_size)
    dev = torch.device(device)
    config = {"method": method, "epochs": int(epochs), "lr": lr, "weight_decay": weight_decay, "batch_size": bs,
              "seed": int(seed), "architecture": getattr(model, "craftlab_name", type(model).__name__),
              "data": data.name}
    if isinstance(cfg, SideMethod):
        taps, view = cfg.spec(model)
        src = sources(model, data, taps, view, cfg.cache, dev)
        with SeededRNG(seed):
            side = cfg.build(model, taps, data.num_classes).to(dev)
        seen = AdaptedModel(model, side, taps, view)
        fit = fit_one(side, src["train"], src["val"], epochs=int(epochs), lr=lr, weight_decay=weight_decay,
                      batch_size=bs, seed=int(seed),
                      callback=None if callback is None else lambda rec: callback(dict(rec), seen))
        config.update(taps=list(taps), cache=None if cfg.cache is None else str(cfg.cache))
        config.update(cfg.record())
        if getattr(view, "method", None) == "miet":
            config.update(k=view.k, bits=view.bits)
        return _side_result(model, method, fit, taps, view, src["test"], config)
    if not isinstance(cfg, FinetuneMethod):
        raise TypeError(f"adaptation method {method!r} must subclass SideMethod or FinetuneMethod")
    kw = dict(optimizer="adamw", lr=lr, epochs=int(epochs), weight_decay=weight_decay, batch_size=bs, seed=int(seed),
              device=dev, progress=False,
              callback=None if callback is None else lambda rec, net: callback(dict(rec), net))
    res = cfg.finetune(model, data, **kw)
    config.update(cfg.record())
    from ..evaluation import evaluate
    from ..train.finetune import eval_loader

    test = evaluate(res.model, eval_loader(data, "test"))
    hist = [{"epoch": h["epoch"], "train_loss": h["train_loss"], "time_s": h["time_s"], "val_loss": h["val_loss"],
             "val_accuracy": h["val_accuracy"]} for h in res.history]
    return AdaptResult(method, res.model, hist, config,
                       {"val_accuracy": hist[-1]["val_accuracy"], "test_accuracy": test["accuracy"]},
                       trainable_params=trainable_parameters(res.model))


def _side_result(model: nn.Module, method: str, fit: FitResult, taps: Sequence[int], view: View, test: Source,
                 config: dict[str, Any]) -> AdaptResult:
    t = evaluate_source(fit.module, test)
    return AdaptResult(method, AdaptedModel(model, fit.module, taps, view), fit.history, config,
                       {"val_accuracy": fit.history[-1]["val_accuracy"], "test_accuracy": t["accuracy"]},
                       trainable_params=trainable_parameters(fit.module))


@dataclass
class SearchResult:
    """K-way search: ``table`` (one row per configuration: its hyper-parameters, trainable parameters, final
    validation and test accuracy; ``best`` marks the highest validation accuracy), ``results`` (an
    :class:`AdaptResult` per configuration), ``best`` (the chosen one), ``time_s`` and ``backbone_passes``."""

    table: Any
    results: list[AdaptResult]
    best: AdaptResult
    time_s: float
    backbone_passes: int


def adapt_search(model: nn.Module, data: DataBundle, configs: Sequence[dict[str, Any]], method: str = "last", *,
                 epochs: int = 8, batch_size: int | None = None, seed: int = 0, gap: int = 1, k: int | None = None,
                 bits: int | None = None, heads: int = 1, cache: str | Path | None = None,
                 device: str | torch.device = "cpu") -> SearchResult:
    """Train K side networks at once (:func:`~craftlab.adapt.parallel.fit_parallel`: one backbone pass per batch
    for all K) and pick the best on validation.

    `configs`: K dicts with any of ``lr``, ``weight_decay``, ``rank`` (and ``seed``, the initialisation; default
    `seed`). Each network equals what :func:`adapt_model` trains with those settings (to float rounding).

    >>> grid = [{"lr": lr, "rank": r} for lr in (1e-3, 3e-3) for r in (4, 8)]  # doctest: +SKIP
    >>> adapt_search(model, data, grid).table.sort_values("val_accuracy")      # doctest: +SKIP
    """
    import time

    import pandas as pd

    _check_common(model, data, method)
    cls = ADAPT_METHODS.get(method)
    if not cls.side:
        side = [n for n in ADAPT_METHODS.names() if ADAPT_METHODS.get(n).side]
        raise ValueError(f"K-way search trains side networks ({', '.join(side)}), not {method!r}")
    configs = [dict(c) for c in configs]
    if len(configs) < 1:
        raise ValueError(f"K-way search needs K >= 1 configurations, got K = {len(configs)}")
    known = {"lr", "weight_decay", "rank", "seed"}
    for c in configs:
        if set(c) - known:
            raise ValueError(f"unknown configuration key(s) {sorted(set(c) - known)}; use {sorted(known)}")
        c.setdefault("lr", cls.default_lr)
        c.setdefault("weight_decay", 0.05)
        if "rank" in cls.option_names():
            c.setdefault("rank", DEFAULT_RANK)
        c.setdefault("seed", seed)
        _check_hyper(epochs, c["lr"], c["weight_decay"], c["seed"])
    bs, dev = int(batch_size or data.batch_size), torch.device(device)
    specs = [side_spec(model, method, gap=gap, k=k, bits=bits, rank=c.get("rank", DEFAULT_RANK), heads=heads)
             for c in configs]
    taps, view = specs[0]
    src = sources(model, data, taps, view, cache, dev)
    nets = [build_side(model, method, taps, data.num_classes, rank=c.get("rank", DEFAULT_RANK), heads=heads,
                       seed=c["seed"]).to(dev)
            for c in configs]
    t0 = time.perf_counter()
    fits = fit_parallel(nets, src["train"], src["val"], epochs=int(epochs), lrs=[c["lr"] for c in configs],
                        weight_decays=[c["weight_decay"] for c in configs], batch_size=bs, seed=int(seed))
    elapsed = time.perf_counter() - t0
    base = {"method": method, "epochs": int(epochs), "batch_size": bs, "data": data.name, "taps": list(taps),
            "architecture": getattr(model, "craftlab_name", type(model).__name__), "k_way": len(configs)}
    results = [_side_result(model, method, f, taps, view, src["test"], {**base, **c}) for f, c in zip(fits, configs)]
    table = pd.DataFrame([{**c, "params": r.trainable_params, "val_accuracy": r.metrics["val_accuracy"],
                           "val_loss": r.history[-1]["val_loss"], "test_accuracy": r.metrics["test_accuracy"]}
                          for c, r in zip(configs, results)])
    best = int(table.sort_values(["val_accuracy", "val_loss"], ascending=[False, True], kind="stable").index[0])
    table["best"] = table.index == best
    return SearchResult(table, results, results[best], elapsed, src["train"].backbone_passes)
