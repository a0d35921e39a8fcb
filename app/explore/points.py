"""What the Explorer's parts share: the loaded arms of a model and the accuracy *points* measured on them.

:class:`Points` is the accuracy (and loss, size, measured sparsity) of one arm under one setting, cached in a
bounded single-flight memo and persisted per arm (:class:`~craftlab_app.common.stores.PointStore`), with the
compressed models behind them (a small LRU, so the landscape of the setting just asked reuses the model
``compress`` made). :class:`Shared` is the state the parts of :class:`~craftlab_app.explore.service.Explorer`
receive — curves (:mod:`.curves`), sharpness (:mod:`.sharpness`) and landscapes (:mod:`.landscapes`) — instead of
reaching into one object's attributes: the loader of arms, the one trainer, the scheduler, the points, the
sharpness memo and the closing flag.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from craftlab.compression import pipeline
from craftlab.settings import Setting, make_setting, parse_setting

from ..common.concurrency import Memo, Scheduler
from ..common.jobs import Trainer, is_cached
from ..common.stores import PointStore
from .arms import Arm, Loaded
from .transfers import TransferArmLoader

__all__ = ["Points", "Progress", "Shared", "as_setting"]

Progress = Callable[[float, str], None]


def as_setting(setting: Setting | str | Mapping[str, Any] | None = None, **kwargs: Any) -> Setting:
    """A :class:`Setting` as given, from a label (``"wanda 2:4 + W4A8"``), or from make_setting arguments
    (a mapping or keywords): one validation either way.

    Example::

        >>> as_setting(method="wanda", sparsity=0.5).label()
        'wanda 50%'
    """
    if isinstance(setting, Setting):
        if kwargs:
            raise TypeError("give either a Setting or keyword arguments, not both")
        return setting
    if setting is None:
        return make_setting(**kwargs)
    if kwargs:
        raise TypeError("give either a setting or keyword arguments, not both")
    return parse_setting(dict(setting) if isinstance(setting, Mapping) else setting)


class Points:
    """Accuracy points of arms under settings (single-flight, bounded, persisted through `store`).

    Example::

        >>> pts = Points(Scheduler(1), PointStore(False))  # doctest: +SKIP
        >>> pts.point(loaded_arm, make_setting("wanda", 0.5))["accuracy"]  # doctest: +SKIP
    """

    def __init__(self, sched: Scheduler, store: PointStore, max_points: int = 200_000,
                 max_compressed: int = 8) -> None:
        self.sched, self.store = sched, store
        self.memo = Memo(max_points)
        self._compressed = Memo(max_compressed)

    def compressed_model(self, la: Loaded, setting: Setting) -> nn.Module:
        """`la`'s model compressed by `setting` (shared: read it, or deep-copy it). Kept in a small LRU for
        foreground requests (the landscape of the setting just asked reuses it), not for background sweeps."""
        def make() -> nn.Module:
            with warnings.catch_warnings():  # the cards say it (panels.cards); the server log stays clean
                warnings.filterwarnings("ignore", message=re.escape(pipeline.BN_QWT2_CLASH[:40]))
                return pipeline.compress(la.model, calib=la.ctx.calib, **setting.compress_kwargs())

        return self._compressed.get_or_compute((*la.point_prefix, setting.key()), make,
                                               store=not self.sched.in_background,
                                               background=self.sched.in_background)

    def point(self, loaded: Loaded, setting: Setting) -> dict[str, Any]:
        """Accuracy/loss (and size, measured sparsity) of one arm under one setting; cached."""
        computed = []

        def compute() -> dict[str, Any]:
            t0 = time.perf_counter()
            model = loaded.model if setting.is_identity else self.compressed_model(loaded, setting)
            res = pipeline.measure(model, loaded.ctx.test, loaded.ctx.example)  # the core's numbers; it only reads
            computed.append(True)
            return {**res, "seconds": time.perf_counter() - t0}

        out = self.memo.get_or_compute((*loaded.point_prefix, setting.key()), compute,
                                       background=self.sched.in_background)
        if computed:  # after the memo holds it, so a flush in between cannot miss it
            self.store.mark_dirty(loaded.point_prefix)
        return out

    def has(self, loaded: Loaded, setting: Setting) -> bool:
        """True when the point of `loaded` under `setting` is in memory."""
        return (*loaded.point_prefix, setting.key()) in self.memo

    def cached(self, loaded: Loaded, setting: Setting) -> dict[str, Any] | None:
        """The point of `loaded` under `setting` if it is in memory, else None (never computes)."""
        return self.memo.get((*loaded.point_prefix, setting.key()))


@dataclass
class Shared:
    """The state the Explorer's parts share; each part receives this object and owns nothing of another's.

    ``arms(model, progress)`` loads a model's arms, fine-tuning the missing ones first (on ``jobs``);
    ``load(arm)`` loads one cached arm and adds its stored points and sharpness to the memos.
    """

    loader: TransferArmLoader
    jobs: Trainer
    sched: Scheduler
    points: Points
    sharpness: Memo
    closing: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arms(self, model: str, progress: Progress | None = None) -> list[Loaded]:
        """Load (fine-tuning first when needed) the arms of `model`; progress(fraction, text) while training."""
        arms = self.loader.resolve(model)
        missing = [a.spec for a in arms if a.path is None and not is_cached(a.spec)]
        if missing:
            self.jobs.train([s for s in missing if s is not None], progress=progress)
        return self.sched.map(self.load, arms)

    def load(self, arm: Arm) -> Loaded:
        """One arm, loaded; the points and sharpness stored for it join the memos (once per process)."""
        loaded = self.loader.load(arm)
        points, sharp = self.points.store.load_once(loaded.point_prefix)
        for k, v in points.items():
            self.points.memo.put((*loaded.point_prefix, k), v)
        if sharp is not None:
            self.sharpness.put(loaded.point_prefix, sharp)
        return loaded
