"""Where a pretrained model comes from: the zoo's "foundation" weights (shipped, cached or pretrained on
demand on the source task), a checkpoint path, or timm's hub.

``create_model`` is the public factory; :mod:`craftlab.models` only builds architectures and never
imports this module (so there is no import circle between models, checkpoints and training).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from torch import nn

from .. import cache
from .._errors import unknown_name
from ..checkpoint import load_checkpoint
from ..data import load_data
from ..evaluation import evaluate
from ..models import ZOO, SeededRNG, build_model, zoo_checkpoint_dir, zoo_names
from .finetune import eval_loader, finetune


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool | str | os.PathLike = True,
    seed: int | None = 0,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, with pretrained weights.

    Args:
        name: a zoo name (``vit-tiny``, ``resnet-tiny``) or any timm architecture name.
        num_classes: classes of a fresh classifier head. ``None`` keeps the pretrained head
            (zoo: the 10 MNIST classes of the source task; timm: its own default).
        pretrained: ``True``: zoo: load (or make) the mnist5k-pretrained weights; timm: fetch hub
            weights. ``False``: random initialisation. A path: a craftlab checkpoint folder of this
            architecture (e.g. made by :func:`pretrain`).
        seed: seeds the initialisation of new parameters (the head), drawn from a private stream
            (:class:`~craftlab.models.SeededRNG`): the caller's RNG is left alone. ``None``: the caller's RNG.
        kwargs: passed to ``timm.create_model`` for timm names.

    Returns:
        The model in eval mode, with ``model.craftlab_name`` set.

    Example::

        model = craftlab.create_model("vit-tiny", num_classes=10)          # zoo foundation, new head
        scratch = craftlab.create_model("vit-tiny", pretrained=False)
    """
    if isinstance(pretrained, (str, os.PathLike)):
        return _with_head(load_checkpoint(pretrained, expected_architecture=name), num_classes, seed)
    if name in ZOO and pretrained:
        build_model(name, num_classes, seed=seed)  # validates the arguments before any pretraining
        ckpt = zoo_checkpoint_dir(name) or pretrain(name, progress=progress)
        return _with_head(load_checkpoint(ckpt, expected_architecture=name), num_classes, seed)
    return build_model(name, num_classes, pretrained=bool(pretrained), seed=seed, **kwargs)


def _with_head(model: nn.Module, num_classes: int | None, seed: int | None) -> nn.Module:
    if num_classes is None:
        return model
    with SeededRNG(seed) if seed is not None else contextlib.nullcontext():
        model.reset_classifier(num_classes)
    return model.eval()


def pretrain(
    name: str,
    data: str = "mnist5k",
    epochs: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Pretrain a zoo model on the source task (default ``mnist5k``) and save it as its "foundation".

    Saves to `out`, by default ``$CRAFTLAB_HOME/zoo/<name>`` (where :func:`craftlab.create_model`
    looks first). Returns the checkpoint folder. Takes well under 2 minutes on 2 CPU cores.

    Give resnet-tiny at least 2 epochs: after one (47 steps) its eval-mode accuracy is at chance, because
    the BatchNorm of its last shortcut normalizes a nearly constant feature (the corner pixel at 1x1
    resolution, variance ~5e-4) whose running variance, starting at 1 and decaying by 0.9 a step, is then
    still ~13x too large (train-mode accuracy is 0.8 at that point).
    """
    if name not in ZOO:
        raise unknown_name("zoo model", name, zoo_names(), hint="only zoo models are pretrained by craftlab")
    spec = ZOO[name]
    model = build_model(name, num_classes=10, seed=seed)
    bundle = load_data(data, model=model, seed=seed)
    result = finetune(model, bundle, optimizer="adamw", lr=spec.pretrain.get("lr", 1e-3) if lr is None else lr,
                      epochs=spec.pretrain.get("epochs", 5) if epochs is None else epochs,
                      warmup_epochs=spec.pretrain.get("warmup_epochs", 0.0), seed=seed, device="cpu", progress=progress)
    test = evaluate(result.model, eval_loader(bundle, "test"))
    result.metrics.update({"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
    result.config.update(role="foundation (source-task pretraining)", zoo_spec=spec.description)
    return result.save(out or cache.home() / "zoo" / name)
