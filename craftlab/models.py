"""Architectures: an offline zoo of tiny timm architectures, plus any timm model by name (builds only).

Zoo models are real timm classes (``VisionTransformer``, ``ResNet``) sized for 28x28 grayscale
input. Their "foundation" weights are made by craftlab (pretraining on ``mnist5k``, the source task):
:func:`craftlab.create_model` (in :mod:`craftlab.train.pretrain`) loads them. This module only builds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ._errors import unknown_name

SHIPPED_ZOO_DIR = Path(__file__).parent / "zoo"
_RNG_LOCK = threading.RLock()
HUB = ("huggingface.co", 443)
"""Where timm's pretrained weights come from (host, port): what :func:`check_hub` tries to reach."""


class SeededRNG:
    """A private, seeded stream of torch's process-wide RNG, for code that can only draw from that RNG
    (timm's module initialisation, dropout, drop-path).

    ``with stream:`` takes a process-wide lock, swaps this stream's state in and, on exit, keeps the
    state it reached and puts the caller's state back. So the block draws the same numbers whatever the
    caller (or another thread, between blocks) did with the global RNG, blocks in different threads take
    turns, and the caller's RNG is left where it was. CPU always; the CUDA generator of `device` too.
    (Code that draws from the global RNG *outside* such blocks while one runs in another thread still
    interleaves with it: torch has one generator per device per process.)
    """

    def __init__(self, seed: int, device: str | torch.device | None = None):
        dev = torch.device(device if device is not None else "cpu")
        self._cuda: int | None = None
        if dev.type == "cuda":
            self._cuda = dev.index if dev.index is not None else torch.cuda.current_device()
            cuda_gen = torch.Generator(device=torch.device("cuda", self._cuda)).manual_seed(seed)
            self._cuda_state = cuda_gen.get_state()
        self._cpu_state = torch.Generator().manual_seed(seed).get_state()
        self._saved: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def __enter__(self) -> SeededRNG:
        _RNG_LOCK.acquire()
        try:
            cuda = torch.cuda.get_rng_state(self._cuda) if self._cuda is not None else None
            self._saved.append((torch.get_rng_state(), cuda))
            torch.set_rng_state(self._cpu_state)
            if self._cuda is not None:
                torch.cuda.set_rng_state(self._cuda_state, self._cuda)
        except BaseException:
            _RNG_LOCK.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            cpu, cuda = self._saved.pop()
            self._cpu_state = torch.get_rng_state()
            torch.set_rng_state(cpu)
            if self._cuda is not None:
                self._cuda_state = torch.cuda.get_rng_state(self._cuda)
                torch.cuda.set_rng_state(cuda, self._cuda)
        finally:
            _RNG_LOCK.release()


@dataclass(frozen=True)
class ZooSpec:
    """An offline zoo entry: how to build it and what input it expects."""

    name: str
    build: Callable[..., nn.Module]
    description: str
    input_size: tuple[int, int, int] = (1, 28, 28)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    pretrain: dict[str, Any] = field(default_factory=dict)


def _vit_tiny(num_classes: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=28, patch_size=7, in_chans=1, num_classes=num_classes,
        embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
    )


def _resnet_tiny(num_classes: int) -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(
        block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 48, 64), stem_width=16,
        in_chans=1, num_classes=num_classes,
    )


ZOO: dict[str, ZooSpec] = {
    "vit-tiny": ZooSpec(
        "vit-tiny", _vit_tiny,
        "timm VisionTransformer: 28x28x1 input, 7x7 patches (16 tokens + CLS), dim 64, depth 4, 4 heads",
        pretrain={"epochs": 15, "lr": 3e-3, "warmup_epochs": 1},
    ),
    "resnet-tiny": ZooSpec(
        "resnet-tiny", _resnet_tiny,
        "timm ResNet: BasicBlock x (1,1,1,1), channels (16,32,48,64), 28x28x1 input",
        pretrain={"epochs": 6, "lr": 2e-3},
    ),
}


def zoo_names() -> list[str]:
    """Names of the offline zoo models.

    Example::

        >>> zoo_names()
        ['resnet-tiny', 'vit-tiny']
    """
    return sorted(ZOO)


@lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


def is_known_model(name: str) -> bool:
    """True for a zoo name or any architecture timm knows."""
    return name in ZOO or name in _timm_names()


def check_hub(name: str, timeout: float = 3.0) -> None:
    """Raise RuntimeError naming the problem, within `timeout` seconds, when timm model `name` needs its
    pretrained weights from the Hugging Face Hub and the Hub is unreachable (instead of a minute of hub
    retries). The one check of the core, the CLI and the app.

    Zoo models (offline) and ``HF_HUB_OFFLINE=1`` (weights already in the Hugging Face cache) skip it.

    Example::

        >>> check_hub("vit-tiny")  # a zoo model: nothing to fetch
    """
    if name in ZOO or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    try:
        socket.create_connection(HUB, timeout=timeout).close()
    except OSError as err:
        raise RuntimeError(
            f"timm model {name!r} needs its pretrained weights from the Hugging Face Hub, which is unreachable "
            f"({err}); the zoo models ({', '.join(zoo_names())}) work offline, and HF_HUB_OFFLINE=1 uses weights "
            "already in the Hugging Face cache") from None


def _attach_info(model: nn.Module, name: str, spec: ZooSpec | None) -> nn.Module:
    model.craftlab_name = name  # type: ignore[attr-defined]
    if spec is not None:
        # Same keys timm uses, so ``timm.data.resolve_model_data_config`` works on zoo models too.
        model.pretrained_cfg = {  # type: ignore[attr-defined]
            "input_size": spec.input_size, "mean": spec.mean, "std": spec.std,
            "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
        }
    return model


def zoo_checkpoint_dir(name: str) -> Path | None:
    """Where the pretrained weights of a zoo model are: cache first, then the shipped copy."""
    import json

    from . import cache

    for root in (cache.home() / "zoo", SHIPPED_ZOO_DIR):
        sidecar = root / name / "craftlab.json"
        if sidecar.exists():
            try:
                if json.loads(sidecar.read_text()).get("zoo_spec") == ZOO[name].description:
                    return root / name
            except (OSError, ValueError):
                pass  # damaged or stale: pretrain again
    return None


def build_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    seed: int | None = 0,
    **kwargs: Any,
) -> nn.Module:
    """Build an architecture by name (no craftlab weights: see :func:`craftlab.create_model` for those).

    Args:
        name: a zoo name (``vit-tiny``, ``resnet-tiny``) or any timm architecture name.
        num_classes: classifier classes (zoo default: 10; timm default: its own).
        pretrained: timm names only: fetch timm's hub weights. Zoo weights are craftlab's own and are
            loaded by :func:`craftlab.create_model`.
        seed: seeds the initialisation (drawn in a :class:`SeededRNG`: the caller's RNG is left alone, and
            builds in other threads cannot change it). ``None``: draw from the caller's global RNG.

    Returns:
        The model in eval mode, with ``model.craftlab_name`` set.

    Example::

        model = craftlab.build_model("resnet-tiny", num_classes=10)     # random weights; the zoo's are
                                                                      # loaded by craftlab.create_model
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    with SeededRNG(seed) if seed is not None else contextlib.nullcontext():
        if name in ZOO:
            model = _attach_info(ZOO[name].build(num_classes or 10), name, ZOO[name])
        else:
            model = _create_timm(name, num_classes, pretrained, **kwargs)
    return model.eval()


def _create_timm(name: str, num_classes: int | None, pretrained: bool, **kwargs: Any) -> nn.Module:
    if name not in _timm_names():
        import difflib

        close = difflib.get_close_matches(name, ZOO, n=2, cutoff=0.6)  # zoo names first
        close += difflib.get_close_matches(name, _timm_names(), n=3 - len(close), cutoff=0.6)
        raise unknown_name("model", name, (), suggestions=close,
                           hint=f"zoo models: {', '.join(zoo_names())}; or any name from timm.list_models()")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained:
        check_hub(name)  # seconds, not a minute of hub retries, when offline
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not fetch pretrained weights for timm model {name!r} ({type(err).__name__}: {err}). "
            "The network may be unreachable: use pretrained=False, put the weights in the Hugging Face "
            "cache, or use an offline zoo model (" + ", ".join(zoo_names()) + ")."
        ) from err
    return _attach_info(model, name, None)


def input_config(model: nn.Module) -> dict[str, Any]:
    """timm's data config of `model`: ``input_size`` (C, H, W), ``mean``, ``std``, ..."""
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)


def head_and_stem(model: nn.Module) -> tuple[str | None, str | None]:
    """Module names of the stem (first Conv2d/Linear) and the classifier head (last one / timm's)."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        return None, None
    head = layers[-1]
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        for n, m in model.named_modules():
            if m is clf and isinstance(m, (nn.Conv2d, nn.Linear)):
                head = n
    return layers[0], head
