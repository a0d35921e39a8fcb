"""Where a pretrained model comes from, and pretraining as a first-class step.

``create_model`` is the public factory: the zoo's "foundation" weights (shipped, cached or pretrained on
demand on the source task), a checkpoint path, or timm's hub. :mod:`craftlab.models` only builds
architectures and never imports this module (so there is no import circle between models, checkpoints and
training).

``pretrain`` trains a model on the source task with Adam / AdamW / SGD, optionally SAM (``craftlab.SAM``,
through :func:`craftlab.finetune`) and optionally a train-time transform (:mod:`craftlab.transforms`), applied
before training and folded after it: the checkpoint holds the plain architecture. ``get_pretrain`` caches runs
by :class:`~craftlab.train.pretrain_runs.PretrainSpec`; ``get_transfer`` fine-tunes a cached run on a target task.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import cache
from .._errors import unknown_name
from ..checkpoint import load_checkpoint
from ..compression.bn import batchnorm_layers, recalibrate_bn
from ..data import DataBundle, load_data
from ..evaluation import evaluate
from ..models import ZOO, SeededRNG, build_model, head_and_stem, zoo_checkpoint_dir, zoo_names
from ..transforms import Transform, get_transform, transform_info
from .finetune import OPTIMIZERS, FinetuneResult, _check_real, eval_loader, finetune
from .pretrain_runs import NAMES_HINT, PretrainSpec, is_cached, pretrain_dir, recipe, spec_record, transfer_dir

FOLD_TOLERANCE = 1e-4
"""Largest relative output change that folding may cause before :func:`pretrain` refuses the result."""


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
    model: str | nn.Module,
    data: str | DataBundle = "mnist5k",
    optimizer: str = "adamw",
    lr: float | None = None,
    epochs: int | None = None,
    sam_rho: float = 0.0,
    transform: str | Transform | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    warmup_epochs: float | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = True,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> Path:
    """Pretrain a model on the source task (default ``mnist5k``) and save it as a checkpoint folder.

    The transform (if any) is applied before training and folded after it, so the checkpoint holds the plain
    architecture with the trained model's outputs: ``craftlab.create_model(name, num_classes, pretrained=path)``,
    :func:`craftlab.load_checkpoint` and :func:`craftlab.finetune` start from it like from any checkpoint.

    Args:
        model: a zoo name (built from scratch, seeded by `seed`, with a head of the data's classes) or a model
            with ``craftlab_name``, e.g. ``craftlab.build_model("resnet18", num_classes=10)`` (trained from its
            current weights; its head must match the data).
        data: a dataset name (split seeded by `seed`) or a :class:`~craftlab.data.DataBundle`.
        optimizer: ``"adamw"`` (the zoo's recipe), ``"adam"`` (SNT's baseline) or ``"sgd"``.
        lr, epochs, warmup_epochs: ``None``: the zoo's recipe for zoo models (its lr for Adam too), else the
            optimizer's default lr, 10 epochs, no warm-up.
        sam_rho: SAM radius (``craftlab.SAM`` around the same optimizer); 0 trains without SAM.
        transform: a registered transform name or spec (``"expand"``, ``"expand:rate=4"``), a
            :class:`~craftlab.transforms.Transform`, or None.
        out: the folder. Default: ``$CRAFTLAB_HOME/zoo/<name>`` for the zoo recipe (a zoo name, AdamW, no SAM, no
            transform, mnist5k: the "foundation" that ``create_model`` loads), else the run's cache folder
            (``$CRAFTLAB_HOME/pretrain/<PretrainSpec key>``, where :func:`get_pretrain` finds it). A model
            object or a DataBundle has no cache key: give `out`.

    Returns:
        The checkpoint folder. Its sidecar's metrics hold ``test_accuracy``, ``test_loss``, ``steps``,
        ``train_time_s``, ``time_per_step_s``, ``fold_max_rel_diff`` (folded vs trained outputs, eval mode) and
        ``bn_recalibrated`` (BatchNorm statistics re-estimated on the training images after folding, for
        transforms with ``stale_batchnorm`` such as ``weight-noise``).

    Raises:
        ValueError naming the problem: unknown optimizer or transform (closest names suggested), a transform
        that applies to no layer of the model (its layers listed), labels that do not match the head, a model
        that already carries a transform.

    Example::

        path = craftlab.pretrain("resnet-tiny", optimizer="adam", transform="repvgg", sam_rho=0.05, seed=0)
        model = craftlab.create_model("resnet-tiny", num_classes=10, pretrained=path)

    Give resnet-tiny at least 2 epochs: after one (47 steps) its eval-mode accuracy is at chance, because
    the BatchNorm of its last shortcut normalizes a nearly constant feature (the corner pixel at 1x1
    resolution, variance ~5e-4) whose running variance, starting at 1 and decaying by 0.9 a step, is then
    still ~13x too large (train-mode accuracy is 0.8 at that point).
    """
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    _check_real("sam_rho", sam_rho)
    t = None if transform is None else get_transform(transform)
    name = _model_name(model)
    r = recipe(name, optimizer)
    lr, epochs = r["lr"] if lr is None else lr, r["epochs"] if epochs is None else epochs
    warmup_epochs = r["warmup_epochs"] if warmup_epochs is None else warmup_epochs
    spec = None
    if isinstance(model, str) and isinstance(data, str):
        spec = PretrainSpec(name, data, optimizer, lr, epochs, warmup_epochs, sam_rho,
                            None if t is None else t.spec, seed).resolved()
    if out is None:
        zoo_recipe = spec is not None and name in ZOO and optimizer == "adamw" and not sam_rho and t is None \
            and data == "mnist5k"
        if spec is None:
            raise ValueError("give out=: a model object or a DataBundle has no cache key")
        out = cache.home() / "zoo" / name if zoo_recipe else pretrain_dir(spec)

    if t is not None:
        t.check(build_model(name) if isinstance(model, str) else model)  # before any data is loaded
    if isinstance(model, str):
        bundle = data if isinstance(data, DataBundle) else load_data(data, model=build_model(name), seed=seed)
        net = build_model(name, num_classes=bundle.num_classes, seed=seed)
    else:
        if transform_info(model) is not None:
            raise ValueError(f"the model already carries transform {transform_info(model)['spec']!r}: fold it "
                             "first (craftlab.transforms.fold), or pass the plain model with transform=")
        net = model
        bundle = data if isinstance(data, DataBundle) else load_data(data, model=net, seed=seed)
    _check_head(net, bundle)
    train_form = net if t is None else t.apply(net, seed=seed)
    result = finetune(train_form, bundle, optimizer=optimizer, lr=lr, epochs=epochs, warmup_epochs=warmup_epochs,
                      sam_rho=sam_rho, seed=seed, device=device, progress=progress, callback=callback)
    plain = result.model if t is None else t.fold(result.model)
    gap = 0.0 if t is None else _fold_gap(result.model, plain, bundle)
    if gap > FOLD_TOLERANCE:
        raise RuntimeError(f"folding transform {t.spec!r} changed the model's outputs (max relative difference "
                           f"{gap:.2e} > {FOLD_TOLERANCE:g}): its fold is not exact")
    recalibrated = bool(t is not None and t.stale_batchnorm and batchnorm_layers(plain))
    if recalibrated:  # statistics gathered under the transform (weight noise) do not fit the plain weights
        plain = recalibrate_bn(plain, bundle.loader("train", shuffle=True, seed=seed))  # shuffled: the batches
        # normalize each other's inputs while the statistics are gathered, so they must be mixed like training's
    val, test = evaluate(plain, eval_loader(bundle, "val")), evaluate(plain, eval_loader(bundle, "test"))
    steps = epochs * math.ceil(len(bundle.train_set) / result.config["batch_size"])
    train_time = sum(h["time_s"] for h in result.history)
    metrics = {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "steps": steps, "train_time_s": train_time, "time_per_step_s": train_time / steps,
               "fold_max_rel_diff": gap, "bn_recalibrated": recalibrated}
    config = {**result.config, "role": "foundation (source-task pretraining)", "classes": bundle.classes,
              "transform": None if t is None else t.describe()}
    if name in ZOO:
        config["zoo_spec"] = ZOO[name].description
    if spec is not None:
        config.update(pretrain=spec_record(spec), arm=spec.arm, label=spec.label)
    return FinetuneResult(plain, result.history, config, metrics).save(out)


def _model_name(model: Any) -> str:
    if isinstance(model, str):
        if model not in ZOO:
            raise unknown_name("zoo model", model, zoo_names(), hint=NAMES_HINT)
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a model name or a torch.nn.Module, got {type(model).__name__}")
    name = getattr(model, "craftlab_name", None)
    if name is None:
        raise ValueError("model has no craftlab_name: build it with craftlab.build_model / create_model")
    return name


def _check_head(model: nn.Module, data: DataBundle) -> None:
    """ValueError when the classifier head's outputs differ from the data's classes."""
    head = head_and_stem(model)[1]
    outputs = getattr(model, "num_classes", None)
    if outputs is None and head is not None:
        outputs = getattr(model.get_submodule(head), "out_features", None)
    if outputs is not None and outputs != data.num_classes:
        raise ValueError(f"the labels do not match the head: {data.name} has {data.num_classes} classes but the "
                         f"model's head ({head}) has {outputs} outputs; build the model with "
                         f"num_classes={data.num_classes} (or call model.reset_classifier({data.num_classes}))")


def _fold_gap(trained: nn.Module, folded: nn.Module, data: DataBundle) -> float:
    """Max |trained(x) − folded(x)| / max |trained(x)| on the first 64 validation images, both in eval mode."""
    x = data.probe_batches(64, split="val")[0][0]
    dev = next(trained.parameters()).device
    with torch.no_grad():
        a, b = trained.eval()(x.to(dev)), folded.eval()(x.to(dev))
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def get_pretrain(spec: PretrainSpec, progress: bool = True, callback: Any = None) -> Path:
    """The checkpoint folder of `spec`, pretraining it first if it is not cached.

    Example::

        from craftlab.train.pretrain import get_pretrain
        from craftlab.train.pretrain_runs import PretrainSpec

        path = get_pretrain(PretrainSpec("resnet-tiny", optimizer="adam", transform="expand", seed=0))
    """
    r = spec.resolved()
    path = pretrain_dir(r)
    if is_cached(path, "pretrain", spec_record(r)):
        return path
    return pretrain(r.model, r.data, r.optimizer, r.lr, r.epochs, r.sam_rho, r.transform, r.seed, out=path,
                    warmup_epochs=r.warmup_epochs, progress=progress, callback=callback)


def get_transfer(spec: PretrainSpec, data: str = "digits", epochs: int = 8, optimizer: str = "adamw",
                 lr: float | None = None, sam_rho: float = 0.0, seed: int | None = None,
                 progress: bool = True, callback: Any = None) -> Path:
    """The checkpoint of a fine-tuning run on `data` that starts from `spec`'s pretrained checkpoint (cached).

    The same plain recipe for every pretraining arm (:func:`craftlab.finetune`: AdamW, cosine, `epochs`); a fresh
    head seeded by `seed` (default: the pretraining seed). The target data split is the dataset's default (seed 0),
    as for :func:`craftlab.get_run`. `callback` gets each fine-tuning epoch's record (as in :func:`finetune`).

    Example::

        spec = craftlab.PretrainSpec(model="resnet-tiny", optimizer="adam", transform="repvgg", seed=0)
        path = craftlab.get_transfer(spec, data="digits", sam_rho=0.05)   # pretrained once, fine-tuned once, cached
        model = craftlab.load_checkpoint(path)
    """
    r = spec.resolved()
    seed = r.seed if seed is None else seed
    record = {"data": data, "optimizer": optimizer, "lr": lr, "epochs": epochs, "sam_rho": sam_rho, "seed": seed,
              "pretrain": spec_record(r)}
    path = transfer_dir(r, data, optimizer, lr, epochs, sam_rho, seed)
    if is_cached(path, "transfer", record):
        return path
    source = get_pretrain(r, progress=progress)
    target = load_data(data, model=build_model(r.model))
    model = create_model(r.model, num_classes=target.num_classes, pretrained=source, seed=seed)
    result = finetune(model, target, optimizer=optimizer, lr=lr, epochs=epochs, sam_rho=sam_rho, seed=seed,
                      device="cpu", progress=progress, callback=callback)
    test = evaluate(result.model, eval_loader(target, "test"))
    result.metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    result.config.update(transfer=record, pretrain=record["pretrain"], label=r.label, classes=target.classes)
    return result.save(path)
