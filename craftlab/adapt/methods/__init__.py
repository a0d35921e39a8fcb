"""Adaptation methods as a registry (:data:`craftlab.registry.ADAPT_METHODS`): one module per method, each a
config dataclass registered with ``@ADAPT_METHODS.register(name)`` — ``linear`` (linear probe), ``lora``,
``full`` (full fine-tuning, ± SAM), ``last`` (LAST side-tuning), ``miet`` (MIET edge tuning).

:data:`ARMS`, THE table of adaptation arms (label → :func:`~craftlab.adapt.recipes.adapt_model` arguments), is
derived from the registry: each method lists its variants (``arms``) and labels them; the app's Adapt tab, the
adaptation benchmark, the curves, the claims ledger and notebook 06 all read it. Adding a method is adding one
module here (or registering a class from your own code): it then appears in :data:`ARMS` and trains through
:func:`~craftlab.adapt.recipes.adapt_model`.

Example::

    from craftlab.adapt.methods import ARMS, arms_table
    list(ARMS)[:3]                  # ['linear probe', 'LoRA (r=4, qkv)', 'full']
    arms_table(depth=12)            # the same methods labelled for a 12-block ViT ('LAST (g=1, m=12)', ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ...registry import ADAPT_METHODS
from ._base import COMMON, DEFAULT_RANK, AdaptMethod, FinetuneMethod, SideMethod, View

__all__ = ["ADAPT_METHODS", "ARMS", "COMMON", "DEFAULT_LR", "DEFAULT_RANK", "LAST", "LORA", "MAIN_ARMS", "MIET",
           "ZOO_DEPTH", "AdaptMethod", "FinetuneMethod", "SideMethod", "View", "arms_table", "method"]

ZOO_DEPTH = 4
"""Blocks of the zoo's vit-tiny, the backbone :data:`ARMS` is labelled for (m = L/g side blocks, k = L)."""


def method(name: str) -> type[AdaptMethod]:
    """The registered method class `name` (an unknown name is a ValueError listing the known ones).

    >>> method("last").default_lr
    0.01
    """
    return ADAPT_METHODS.get(name)


def _ordered() -> list[tuple[str, type[AdaptMethod]]]:
    return sorted(ADAPT_METHODS.all().items(), key=lambda item: (item[1].order, item[0]))


def arms_table(depth: int = ZOO_DEPTH) -> dict[str, dict[str, Any]]:
    """Label → ``{"method": name, **options}`` of every registered method's arms, labelled for a backbone of
    `depth` blocks, in the methods' order.

    >>> arms_table()["LAST (g=2, m=2)"]
    {'method': 'last', 'gap': 2}
    """
    out: dict[str, dict[str, Any]] = {}
    for name, cls in _ordered():
        for variant in cls.arms:
            label = cls.configure(variant).label(depth)
            if label in out:
                raise ValueError(f"two adaptation arms are labelled {label!r}")
            out[label] = {"method": name, **variant}
    return out


class _Live(Mapping[str, Any]):
    """A read-only mapping recomputed from the registry on every read (a method registered later shows)."""

    def __init__(self, make: Callable[[], dict[str, Any]], doc: str) -> None:
        self._make, self.__doc__ = make, doc

    def __getitem__(self, key: str) -> Any:
        return self._make()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._make())

    def __len__(self) -> int:
        return len(self._make())

    def __repr__(self) -> str:
        return repr(self._make())


ARMS: Mapping[str, dict[str, Any]] = _Live(
    arms_table, "THE table of adaptation arms on the zoo vit-tiny (4 blocks): label → adapt_model arguments.")
"""THE table of adaptation arms: label → :func:`~craftlab.adapt.recipes.adapt_model` arguments, derived from the
registry (on the zoo vit-tiny, 4 blocks: a side block every g = 1 block gives m = 4 of them, and MIET gathers
k = 4 blocks). The linear probe and MIET's device train on features received (or tapped) once; LAST runs the
frozen backbone on every batch, as LoRA and full fine-tuning do."""
DEFAULT_LR: Mapping[str, float] = _Live(lambda: {n: c.default_lr for n, c in _ordered()},
                                        "Peak AdamW learning rate per method.")
"""Peak AdamW learning rates per method: the best validation accuracy on the embedded default (vit-tiny →
digits, 8 epochs) over 1e-3 … 1e-1 (full fine-tuning: :func:`craftlab.finetune`'s default)."""

LORA, LAST, MIET = (method(n).configure({}).label(ZOO_DEPTH) for n in ("lora", "last", "miet"))
"""The labels of LoRA, LAST (g=1) and MIET (k=4) in :data:`ARMS`."""
MAIN_ARMS = ("linear probe", LORA, "full", "full + SAM", LAST, MIET)
"""The arms :func:`craftlab.studies.adapt.compare_methods` runs by default (the edge variants are extra)."""
