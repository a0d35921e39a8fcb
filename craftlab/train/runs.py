"""Cached fine-tuning runs: the same settings give the same checkpoint, built once.

A run is keyed by every input that changes its result (model, data, optimizer, lr, epochs, ρ,
ASAM, seed); its checkpoint lives in ``$CRAFTLAB_HOME/runs/<key>``. The CrAFT demo, the app and the
notebooks share these, so a model fine-tuned once is reused everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import cache
from ..checkpoint import read_meta


@dataclass(frozen=True)
class RunSpec:
    """What a fine-tuning run is: the CrAFT recipe's knobs."""

    model: str = "vit-tiny"
    data: str = "digits"
    optimizer: str = "adamw"
    lr: float | None = None
    epochs: int = 8
    sam_rho: float = 0.0
    adaptive: bool = False
    seed: int = 0

    @property
    def arm(self) -> str:
        """Short label: ``adamw``, ``adamw+sam0.05``, ``adamw+asam0.5``."""
        if self.sam_rho == 0:
            return self.optimizer
        return f"{self.optimizer}+{'asam' if self.adaptive else 'sam'}{self.sam_rho:g}"

    @property
    def key(self) -> str:
        lr = "" if self.lr is None else f"-lr{self.lr:g}"
        data = self.data.replace(":", "_").replace("/", "_")
        return f"{self.model}-{data}-{self.arm}{lr}-e{self.epochs}-s{self.seed}"


def run_dir(spec: RunSpec) -> Path:
    return cache.home() / "runs" / spec.key


def get_run(spec: RunSpec, progress: bool = True, callback: Any = None) -> Path:
    """The checkpoint folder of `spec`, fine-tuning it first if it is not cached."""
    path = run_dir(spec)
    try:
        read_meta(path)
        return path
    except ValueError:
        pass
    from ..data import load_data
    from ..evaluation import evaluate
    from ..models import build_model
    from .finetune import finetune
    from .pretrain import create_model

    data = load_data(spec.data, model=build_model(spec.model))  # input config only
    model = create_model(spec.model, num_classes=data.num_classes, pretrained=True, seed=spec.seed)
    result = finetune(model, data, optimizer=spec.optimizer, lr=spec.lr, epochs=spec.epochs, sam_rho=spec.sam_rho,
                      adaptive=spec.adaptive, seed=spec.seed, progress=progress, callback=callback)
    test = evaluate(result.model, data.test)
    result.metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    result.config.update(run=asdict(spec), arm=spec.arm, classes=data.classes)
    return result.save(path)


def list_runs() -> list[dict[str, Any]]:
    """Every cached run: ``{"path", "key", "architecture", "arm", "test_accuracy", ...}``."""
    root = cache.home() / "runs"
    out = []
    for p in sorted(root.glob("*/craftlab.json")) if root.exists() else []:
        try:
            meta = read_meta(p.parent)
        except ValueError:
            continue
        out.append({"path": str(p.parent), "key": p.parent.name, "architecture": meta["architecture"],
                    "arm": meta.get("arm"), "run": meta.get("run"),
                    "test_accuracy": meta.get("metrics", {}).get("test_accuracy")})
    return out
