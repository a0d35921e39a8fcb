"""Fine-tuning with the CrAFT recipe: the default schedule, plus sharpness minimization when ρ > 0.

``finetune(model, data, sam_rho=0.0)`` and ``finetune(model, data, sam_rho=0.05)`` differ in nothing
but the SAM wrapper around the same base optimizer: same schedule, same seed, same data order.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .._errors import unknown_name
from ..data import DataBundle
from ..evaluation import evaluate
from ..models import SeededRNG
from . import ddp
from .sam import SAM, frozen_bn, parse_sam_mode

OPTIMIZERS = {
    # name: (class, default lr, default kwargs)
    "adamw": (torch.optim.AdamW, 1e-3, {"weight_decay": 0.05}),
    "adam": (torch.optim.Adam, 1e-3, {"weight_decay": 0.0}),
    "sgd": (torch.optim.SGD, 0.05, {"momentum": 0.9, "weight_decay": 5e-4}),
}
SCHEDULES = ("cosine", "constant")
AMP_MODES = (None, "bf16", "fp16")


@dataclass
class FinetuneResult:
    """The fine-tuned model (a new object), per-epoch history and the configuration used.

    Example::

        res = craftlab.finetune(model, data, sam_rho=0.05, epochs=8)
        res.metrics["val_accuracy"], res.train_time_s, res.history[-1]
        res.save("runs/vit-sam")                       # a checkpoint folder (safetensors + JSON)
    """

    model: nn.Module
    history: list[dict[str, float]]
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def train_time_s(self) -> float:
        return sum(h["time_s"] for h in self.history)

    def save(self, directory: str | Path) -> Path:
        """Checkpoint the model with the config, history and metrics in the sidecar (under data-parallel training:
        written once, by rank 0, while the other ranks wait)."""
        from ..checkpoint import save_checkpoint

        meta = {**self.config, "history": self.history, "metrics": self.metrics}
        return ddp.save_once(lambda: save_checkpoint(self.model, directory, meta), Path(directory))


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") from None


def eval_loader(data: DataBundle, split: str, batch_size: int | None = None) -> DataLoader:
    """An unshuffled loader over one split that draws nothing from torch's global RNG (a DataLoader without
    a generator takes a seed from it at every pass, which would move the caller's RNG)."""
    sets = {"train": data.train_set, "val": data.val_set, "test": data.test_set, "calib": data.calib_set}
    if split not in sets:
        raise unknown_name("split", split, sets)
    return DataLoader(sets[split], batch_size=batch_size or data.batch_size, shuffle=False,
                      generator=torch.Generator().manual_seed(0), num_workers=data.num_workers)


def draws_randomness(model: nn.Module) -> bool:
    """True when training `model` draws from torch's global RNG: dropout, drop-path, DropBlock, patch dropout
    or a timm ``drop_rate`` above 0 (the zoo models have none)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        for attr in ("drop_prob", "drop_rate", "drop_path_rate", "prob"):
            v = getattr(m, attr, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return True
    return False


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_real(name: str, v: Any, *, low: float = 0.0, strict: bool = False, high: float | None = None,
                optional: bool = False) -> None:
    if v is None and optional:
        return
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > low if strict else v >= low) and (high is None or v < high)
    if not ok:
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise ValueError(f"{name} must be a finite number {bound}{' (or None)' if optional else ''}, got {v!r}")


def _takes_model(callback: Callable[..., Any]) -> bool:
    """Whether `callback` takes a second positional argument (the model being trained)."""
    import inspect

    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _validate(model, data, optimizer, lr, epochs, schedule, warmup_epochs, sam_rho, adaptive, eta,
              weight_decay, batch_size, seed, amp, label_smoothing, callback, sam_sync_first=False,
              sam_mode="sam", sync_bn=False) -> None:
    """Every argument of :func:`finetune`, checked once, before anything is built."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise TypeError("data must be a craftlab DataBundle (see craftlab.load_data / craftlab.from_tensors)")
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    if schedule not in SCHEDULES:
        raise unknown_name("schedule", schedule, SCHEDULES)
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if not (_is_int(epochs) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    _check_real("lr", lr, strict=True, optional=True)
    _check_real("warmup_epochs", warmup_epochs)
    if warmup_epochs > epochs:
        raise ValueError(f"warmup_epochs must be <= epochs ({epochs}), got {warmup_epochs!r}")
    _check_real("sam_rho", sam_rho)
    if adaptive and sam_rho == 0:
        raise ValueError("adaptive=True (ASAM) needs sam_rho > 0")
    mode = parse_sam_mode(sam_mode)
    if mode.name != "sam" and sam_rho == 0:
        raise ValueError(f"sam_mode={sam_mode!r} needs sam_rho > 0 (the radius; rwp: the noise scale σ)")
    _check_real("eta", eta)
    _check_real("weight_decay", weight_decay, optional=True)
    _check_real("label_smoothing", label_smoothing, high=1.0)
    if batch_size is not None and not (_is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer (or None), got {batch_size!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable (it gets each epoch's record)")
    for flag, v in (("sam_sync_first", sam_sync_first), ("sync_bn", sync_bn)):
        if not isinstance(v, bool):
            raise ValueError(f"{flag} must be True or False, got {v!r}")


def finetune(
    model: nn.Module,
    data: DataBundle,
    optimizer: str = "adamw",
    lr: float | None = None,
    epochs: int = 10,
    schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    sam_rho: float = 0.0,
    adaptive: bool = False,
    eta: float = 0.0,
    weight_decay: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    amp: str | None = None,
    label_smoothing: float = 0.0,
    progress: bool = True,
    callback: Callable[[dict[str, float]], None] | None = None,
    sam_sync_first: bool = False,
    sam_mode: str = "sam",
    sync_bn: bool = False,
) -> FinetuneResult:
    """Fine-tune a copy of `model` on `data.train`; `model` itself is not changed.

    The result depends only on the arguments: the data order comes from a generator seeded by `seed`,
    and a model that draws from torch's global RNG (dropout, drop-path: see :func:`draws_randomness`)
    draws from a :class:`~craftlab.models.SeededRNG` stream seeded by `seed`, swapped in for each step.
    The caller's RNG (torch, numpy, ``random``) is left as it was, and runs in several threads at once
    give what each gives alone.

    Args:
        optimizer: ``"adamw"`` (default lr 1e-3, wd 0.05), ``"adam"`` (lr 1e-3, no weight decay) or ``"sgd"``
            (lr 0.05, momentum 0.9, wd 5e-4).
        lr: peak learning rate (> 0); ``None``: the optimizer's default.
        epochs: a positive integer. warmup_epochs: linear warm-up length, in [0, epochs].
        schedule: ``"cosine"`` (per step, to 0, after optional linear warm-up) or ``"constant"``.
        sam_rho: SAM radius ρ >= 0; 0 trains with the base optimizer alone. Everything else stays identical.
        adaptive: ASAM (scale-invariant neighbourhood; use a ~10x larger ρ). eta: ASAM's η >= 0.
        amp: ``None``, ``"bf16"`` (autocast, no scaler) or ``"fp16"`` (autocast + GradScaler; CUDA only).
        callback: called with each epoch's record (for live plots); a callback of two arguments also gets the
            model being trained, to evaluate it (e.g. compressed: ``craftlab.distributed.tune``), not change it.
        sam_sync_first: data-parallel runs only (torchrun / ``accelerate launch``, see
            :mod:`craftlab.train.ddp`): all-reduce SAM's first gradient too, so every replica perturbs by the
            global batch's gradient; default False: each replica perturbs by its own (m-sharpness).
        sam_mode: how SAM spends its second pass (with sam_rho > 0; see :mod:`craftlab.train.sam`): ``"sam"``
            (every step, 2 passes), ``"looksam:K"`` (every K-th step, LookSAM's reused component in between),
            ``"random:F"`` (on a random fraction F of the steps, drawn from a generator seeded by `seed`),
            ``"msam"`` (Momentum-SAM: one pass at w − ρ m/‖m‖) or ``"rwp"`` (one pass at w + filter-wise
            Gaussian noise of relative scale σ = sam_rho).
        sync_bn: data-parallel runs only: BatchNorm with the global batch's statistics (SyncBatchNorm), so a
            BatchNorm model equals the one-process run; default False: per-replica statistics.

    Returns:
        :class:`FinetuneResult` with ``.model`` (eval mode, on `device`) and ``.history`` records
        ``epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, time_s`` (seconds).

    Raises:
        ValueError (TypeError for a wrong type of model, data or callback) naming the bad argument; under
        data-parallel training also for a batch size that the world size does not divide.

    Example::

        res = finetune(create_model("vit-tiny", num_classes=10), load_data("digits"), epochs=2, sam_rho=0.05)
        res.history[-1]["val_accuracy"]
    """
    _validate(model, data, optimizer, lr, epochs, schedule, warmup_epochs, sam_rho, adaptive, eta,
              weight_decay, batch_size, seed, amp, label_smoothing, callback, sam_sync_first, sam_mode, sync_bn)
    mode = parse_sam_mode(sam_mode)
    epochs, seed = int(epochs), int(seed)  # numpy integers too
    batch_size = None if batch_size is None else int(batch_size)
    dev = _resolve_device(device)
    if amp == "fp16" and dev.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' or None on CPU")
    world = ddp.current_world()  # None in a single process: nothing below changes for it
    if world is not None:
        world.check_batch(batch_size or data.batch_size)
        dev = world.device(dev)

    model = copy.deepcopy(model).to(dev)
    net = model if world is None else world.wrap(model, dev, sync_bn=sync_bn)
    rng_seed = seed if world is None else seed + world.rank  # replicas draw different dropout masks
    rng = SeededRNG(rng_seed, dev) if draws_randomness(model) else contextlib.nullcontext()
    opt_cls, default_lr, base_kwargs = OPTIMIZERS[optimizer]
    lr = default_lr if lr is None else lr
    kwargs = {**base_kwargs, "lr": lr}
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    params = [p for p in model.parameters() if p.requires_grad]
    use_sam = sam_rho > 0
    opt = (SAM(params, opt_cls, rho=sam_rho, adaptive=adaptive, eta=eta, model=model, seed=seed, **mode.options(),
               **kwargs) if use_sam else opt_cls(params, **kwargs))
    base = opt.base_optimizer if use_sam else opt

    loader = data.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
    global_batch, n_train = loader.batch_size, len(data.train_set)
    if world is not None:
        loader = world.loader(loader)
    val_loader = eval_loader(data, "val")
    total_steps = epochs * len(loader)
    warmup = int(warmup_epochs * len(loader))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress_ = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(base, lr_factor)
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = net(x)
            return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    config = {
        "architecture": getattr(model, "craftlab_name", type(model).__name__), "data": data.describe(),
        "optimizer": optimizer, "lr": lr, "weight_decay": kwargs.get("weight_decay"), "epochs": epochs,
        "schedule": schedule, "warmup_epochs": warmup_epochs, "sam_rho": sam_rho, "adaptive": adaptive,
        "eta": eta, "batch_size": loader.batch_size, "seed": seed, "amp": amp, "label_smoothing": label_smoothing,
        "device": str(dev),
    }
    if use_sam and mode.name != "sam":  # recorded only when not the default, as configs before the option
        config["sam_mode"] = mode.spec()
    if world is not None:
        config.update(batch_size=global_batch, world_size=world.size, sam_sync_first=sam_sync_first,
                      sync_bn=sync_bn)
    history: list[dict[str, float]] = []
    arm = ("ASAM" if adaptive else "SAM") + f" rho={sam_rho:g}" if use_sam else optimizer
    arm += f" {mode.spec()}" if use_sam and mode.name != "sam" else ""
    bar = tqdm(range(epochs), desc=f"finetune {config['architecture']} [{arm}]", leave=False,
               disable=not progress or (world is not None and not world.is_main))
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        seen, loss_sum, correct = 0, 0.0, 0
        for step, (x, y) in enumerate(loader):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            weight = 1.0 if world is None else world.loss_weight(step, len(y), n_train, global_batch)
            with rng:
                two_pass = use_sam and opt.plan_step()  # False for a one-pass step of an efficient mode
                if use_sam and not two_pass:
                    opt.perturb()  # msam / rwp: the one pass runs at w + ε; looksam / random: at w
                # under DDP, SAM's first backward skips the all-reduce unless sam_sync_first (see ddp module doc)
                local = world is not None and two_pass and not sam_sync_first
                with net.no_sync() if local else contextlib.nullcontext():
                    loss, logits = forward_loss(x, y)
                    backward(loss if world is None else loss * weight)
                if two_pass:
                    opt.first_step(zero_grad=True)
                    with frozen_bn(model):
                        loss2 = forward_loss(x, y)[0]
                        backward(loss2 if world is None else loss2 * weight)
                    opt.second_step(zero_grad=True, scaler=scaler)
                elif use_sam:
                    opt.second_step(zero_grad=True, scaler=scaler)
                else:
                    if scaler is not None:
                        scaler.step(opt)
                    else:
                        opt.step()
                    opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            scheduler.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        elapsed = time.perf_counter() - t0
        if world is not None:  # the epoch's statistics over the global batches
            seen, loss_sum, correct = world.all_sum(seen, loss_sum, correct)
            world.sync_buffers(model)
        val = evaluate(model, val_loader)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": base.param_groups[0]["lr"],
                  "time_s": elapsed}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_accuracy']:.3f}")
        if callback is not None:
            callback(*((record, model) if _takes_model(callback) else (record,)))
    model.eval()
    if world is not None and sync_bn:
        ddp.plain_batchnorm(model)
    return FinetuneResult(model=model, history=history, config=config,
                          metrics={"val_accuracy": history[-1]["val_accuracy"]})
