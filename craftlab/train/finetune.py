"""Fine-tuning with the CrAFT recipe: the default schedule, plus sharpness minimization when ρ > 0.

``finetune(model, data, sam_rho=0.0)`` and ``finetune(model, data, sam_rho=0.05)`` differ in nothing
but the SAM wrapper around the same base optimizer: same schedule, same seed, same data order.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._errors import unknown_name
from ..data import DataBundle
from ..evaluation import evaluate
from .sam import SAM, frozen_bn

OPTIMIZERS = {
    # name: (class, default lr, default kwargs)
    "adamw": (torch.optim.AdamW, 1e-3, {"weight_decay": 0.05}),
    "sgd": (torch.optim.SGD, 0.05, {"momentum": 0.9, "weight_decay": 5e-4}),
}
SCHEDULES = ("cosine", "constant")
AMP_MODES = (None, "bf16", "fp16")


@dataclass
class FinetuneResult:
    """The fine-tuned model (a new object), per-epoch history and the configuration used."""

    model: nn.Module
    history: list[dict[str, float]]
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def train_time_s(self) -> float:
        return sum(h["time_s"] for h in self.history)

    def save(self, directory: str | Path) -> Path:
        """Checkpoint the model with the config, history and metrics in the sidecar."""
        from ..checkpoint import save_checkpoint

        return save_checkpoint(self.model, directory, {**self.config, "history": self.history, "metrics": self.metrics})


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
) -> FinetuneResult:
    """Fine-tune a copy of `model` on `data.train`; `model` itself is not changed.

    Args:
        optimizer: ``"adamw"`` (default lr 1e-3, wd 0.05) or ``"sgd"`` (lr 0.05, momentum 0.9, wd 5e-4).
        schedule: ``"cosine"`` (per step, to 0, after optional linear warm-up) or ``"constant"``.
        sam_rho: SAM radius ρ; 0 trains with the base optimizer alone. Everything else stays identical.
        adaptive: ASAM (scale-invariant neighbourhood; use a ~10x larger ρ).
        amp: ``None``, ``"bf16"`` (autocast, no scaler) or ``"fp16"`` (autocast + GradScaler; CUDA only).
        callback: called with each epoch's record (for live plots).

    Returns:
        :class:`FinetuneResult` with ``.model`` (eval mode, on `device`) and ``.history`` records
        ``epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, time_s`` (seconds).
    """
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    if schedule not in SCHEDULES:
        raise unknown_name("schedule", schedule, SCHEDULES)
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not sam_rho >= 0:
        raise ValueError(f"sam_rho must be >= 0, got {sam_rho}")
    if adaptive and sam_rho == 0:
        raise ValueError("adaptive=True (ASAM) needs sam_rho > 0")
    if not isinstance(data, DataBundle):
        raise TypeError("data must be a craftlab DataBundle (see craftlab.load_data / craftlab.from_tensors)")
    dev = _resolve_device(device)
    if amp == "fp16" and dev.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' or None on CPU")

    torch.manual_seed(seed)
    model = copy.deepcopy(model).to(dev)
    opt_cls, default_lr, base_kwargs = OPTIMIZERS[optimizer]
    lr = default_lr if lr is None else lr
    kwargs = {**base_kwargs, "lr": lr}
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    params = [p for p in model.parameters() if p.requires_grad]
    use_sam = sam_rho > 0
    opt = (SAM(params, opt_cls, rho=sam_rho, adaptive=adaptive, eta=eta, model=model, **kwargs)
           if use_sam else opt_cls(params, **kwargs))
    base = opt.base_optimizer if use_sam else opt

    loader = data.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
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
            logits = model(x)
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
    history: list[dict[str, float]] = []
    arm = ("ASAM" if adaptive else "SAM") + f" rho={sam_rho:g}" if use_sam else optimizer
    bar = tqdm(range(epochs), desc=f"finetune {config['architecture']} [{arm}]", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        seen, loss_sum, correct = 0, 0.0, 0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss, logits = forward_loss(x, y)
            backward(loss)
            if use_sam:
                opt.first_step(zero_grad=True)
                with frozen_bn(model):
                    backward(forward_loss(x, y)[0])
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
        val = evaluate(model, data.val)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": base.param_groups[0]["lr"],
                  "time_s": elapsed}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_accuracy']:.3f}")
        if callback is not None:
            callback(record)
    model.eval()
    return FinetuneResult(model=model, history=history, config=config,
                          metrics={"val_accuracy": history[-1]["val_accuracy"]})
