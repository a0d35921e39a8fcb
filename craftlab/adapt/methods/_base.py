"""What an adaptation method is: a frozen config dataclass (its hyper-parameters as fields, with their defaults)
that knows its label and how it trains. Two kinds share the recipe of :func:`craftlab.adapt.recipes.adapt_model`:

* :class:`SideMethod` — the backbone stays frozen and runs without autograd; a small network trains on the
  features it taps (:meth:`SideMethod.spec`: which taps and what view of them; :meth:`SideMethod.build`: the
  network);
* :class:`FinetuneMethod` — back-propagation through (a copy of) the backbone with :func:`craftlab.finetune`
  (:meth:`FinetuneMethod.prepare`: the network it trains).

The module is light (torch is imported where a method computes), so the command line reads names and labels
without loading torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ...data import DataBundle

DEFAULT_RANK = 16
"""LSA rank r of LAST and MIET (d/4 on vit-tiny's d = 64)."""
COMMON = ("rank", "heads", "gap", "k", "bits", "lora_rank", "sam_rho", "cache")
"""The method options :func:`~craftlab.adapt.recipes.adapt_model` has always taken for every method (each method
reads those among its fields and leaves the others)."""


def dim(model: nn.Module) -> int:
    """The token width d of a timm ViT."""
    return int(getattr(model, "embed_dim", None) or model.num_features)


def pool(model: nn.Module) -> str:
    """How the model pools its tokens into the pre-logits feature: ``"cls"`` or ``"mean"``."""
    has_cls = getattr(model, "cls_token", None) is not None
    return "cls" if getattr(model, "global_pool", "token") == "token" and has_cls else "mean"


@dataclass(frozen=True)
class View:
    """What a side network reads from the tapped features (z of the taps, pooled): LAST's z_0, z_g, …, z_L;
    MIET's Gather*(k), sent at `bits`; the linear probe's pooled feature."""

    method: str
    k: int = 0
    bits: int | None = None

    def __call__(self, z: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        if self.method == "last":
            return z
        if self.method == "miet":
            from .. import miet

            return miet.quantized_copy(miet.gather_star(z, self.k), self.bits)  # the taps are z_0 … z_k
        return pooled


@dataclass(frozen=True)
class AdaptMethod:
    """One way of adapting a pretrained ViT. Subclasses are dataclasses whose fields are the method's options.

    Class attributes (its name is the one it is registered under): ``default_lr`` (peak AdamW rate), ``order``
    (its place in the arms table), ``arms`` (the variants the arms table lists: field values, one dict per arm),
    ``side`` (trains a side network on tapped features).

    Example::

        from craftlab.registry import ADAPT_METHODS
        cfg = ADAPT_METHODS.get("last").configure({"gap": 2})
        cfg.label(depth=4)                      # 'LAST (g=2, m=2)'
    """

    default_lr: ClassVar[float] = 1e-3
    order: ClassVar[int] = 100
    arms: ClassVar[tuple[Mapping[str, Any], ...]] = ({},)
    side: ClassVar[bool] = False

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The method's options: its dataclass fields."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def configure(cls, options: Mapping[str, Any]) -> AdaptMethod:
        """The config from `options`: its own fields are taken; :data:`COMMON` options it has no field for are
        left (every method has always accepted them); any other name is a ValueError."""
        own = set(cls.option_names())
        unknown = sorted(set(options) - own - set(COMMON))
        if unknown:
            raise ValueError(f"adaptation method {cls.__name__} has no option(s) {unknown}; its options: "
                             f"{sorted(own)}")
        return cls(**{k: v for k, v in options.items() if k in own})

    def label(self, depth: int = 4) -> str:
        """The arm's label on a backbone of `depth` blocks (the tables of the project use it)."""
        return type(self).__name__

    def options(self) -> dict[str, Any]:
        """Field -> value."""
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """What :class:`~craftlab.adapt.recipes.AdaptResult`'s ``config`` records of the method's options."""
        return {}

    def sent_per_image(self, model: nn.Module, image: torch.Tensor) -> int:
        """Bytes per image this method sends to a device that trains it (default: the image itself, as full
        fine-tuning on the device receives it)."""
        from ..miet import transfers

        return {t.method: t.per_image_bytes for t in transfers(model, image, 1, 1, bits=())}["full fine-tuning"]


@dataclass(frozen=True)
class SideMethod(AdaptMethod):
    """A side network on the frozen backbone's taps: `cache` is where the tapped features live (None: the
    backbone runs on every batch; ``"memory"``: tapped once; a folder: the on-disk feature cache)."""

    side: ClassVar[bool] = True
    cache: str | None = None

    def spec(self, model: nn.Module) -> tuple[tuple[int, ...], Any]:
        """(the tapped blocks, the view: ``view(z, pooled)`` -> the side network's input), every option checked
        against `model` (ValueError)."""
        raise NotImplementedError

    def build(self, model: nn.Module, taps: tuple[int, ...], num_classes: int) -> nn.Module:
        """A fresh side network (called under the seeded stream of its initialisation)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FinetuneMethod(AdaptMethod):
    """Back-propagation through the backbone: :meth:`prepare` gives the network that trains (a copy: the
    caller's model is not changed), :meth:`finetune` trains it with :func:`craftlab.finetune`'s recipe."""

    def prepare(self, model: nn.Module, seed: int = 0) -> nn.Module:
        """The network to train (default: a copy of `model`, every parameter trainable as it is)."""
        import copy

        return copy.deepcopy(model)

    def finetune(self, model: nn.Module, data: DataBundle, **kwargs: Any) -> Any:
        """:func:`craftlab.finetune` of :meth:`prepare`'s network (`kwargs`: the shared budget and recipe)."""
        from ...train.finetune import finetune

        return finetune(self.prepare(model, kwargs.get("seed", 0)), data, **kwargs)
