"""Loss landscapes, a part of the app's :class:`~craftlab_app.explore.service.Explorer`: coarse first, fine later,
given up when a newer request replaces the one that asked.

A landscape of one arm under one setting is the 1-D slice along the compression direction
(:func:`craftlab.probes.landscape.compression_path`, with its second-order prediction) and the 2-D plane
through it (``compression_plane``); with no compression, a random ``line`` and ``plane``. It is computed at
one of ``Explorer.levels`` — ``(plane steps, path steps)`` from coarse to fine, on one plane extent; the
origin and the compressed point α = 1 lie on every grid (α = 1 is added where the steps miss it), and the
points the grids share agree exactly.

Speed (profiled, vit-tiny and resnet-tiny, 128 probe images, 2 cores): a forward pass of the probe batch
is 15-40 ms and every grid point is one forward pass; batching grid points into one call (``torch.func``
``vmap`` over parameter sets) was *slower* (compute-bound, and no batching rule for the fused CPU
attention), so the levels cut the number of points instead: the coarse level (5×5 plane, α = 1 added: 30
points; 9-point path; ~45 forward passes per arm) answers a new setting in about 2 s on 2 busy cores, the fine
level (13×13 + 21) is computed in the background and replaces it. The arms run in parallel, one thread each
(in the background too, on low-priority threads). A level's path and plane are one pass
(:func:`craftlab.probes.landscape.compression_slices`, ``line_and_plane``: the path is the plane's β = 0 line),
and the fine level reuses the coarse level's points and second-order terms: 150 forward passes per arm instead
of 192 plus a gradient and a Hessian-vector product (benchmarks/RESULTS.md, *app fine landscape*).

Cancellation: ``cancelled()`` is asked before every forward pass (through the probes' ``loss_fn``), so a
request replaced by a newer one stops within one forward pass and frees its lane.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F

from craftlab.settings import Setting

from ..common.concurrency import HVP_LOCK, Memo, memo_call, raise_if
from ..common.stores import LandscapeStore
from .arms import Loaded
from .points import Shared, as_setting

__all__ = ["Landscapes", "cancellable_loss"]

Level = tuple[int, int]
"""(plane steps per axis, path steps) of one landscape resolution."""


def cancellable_loss(cancelled: Callable[[], bool] | None) -> Callable[..., Any]:
    """Cross-entropy that raises :class:`~craftlab_app.common.concurrency.Cancelled` first when `cancelled()`
    says so."""
    if cancelled is None:
        return F.cross_entropy

    def loss(out: Any, y: Any) -> Any:
        raise_if(cancelled)
        return F.cross_entropy(out, y)

    return loss


def _with_second_order(path: Any, base: Any, compressed: Any, probe: Any, loss_fn: Any,
                       known: dict[str, Any] | None = None) -> Any:
    """`path` with the 2nd-order prediction ``loss(0) + t g·δ + t²/2 δᵀHδ`` that ``compression_path`` adds with
    ``second_order=True``: the same terms (:func:`craftlab.probes.landscape.second_order_terms`), computed under
    :data:`~craftlab_app.common.concurrency.HVP_LOCK` so that the grid's forward passes run outside it, or taken from
    `known` (the meta of a coarser level's path of the same models: the terms do not depend on the level)."""
    from dataclasses import replace

    import numpy as np

    from craftlab.probes import landscape as L

    if known is not None and "grad_dot_delta" in known:
        gd, dhd = known["grad_dot_delta"], known["delta_H_delta"]
    else:
        with HVP_LOCK:
            so = L.second_order_terms(base, probe, L.compression_delta(base, compressed), loss_fn)
        gd, dhd = so["grad_dot_delta"], so["delta_H_delta"]
    t = np.asarray(path.t, float)
    predicted = path.loss[path.index_original] + t * gd + 0.5 * t ** 2 * dhd
    meta = {**path.meta, "grad_dot_delta": gd, "delta_H_delta": dhd, "predicted_jump": gd + 0.5 * dhd}
    return replace(path, predicted=predicted, meta=meta)


class Landscapes:
    """Landscapes at coarse and fine `levels` (``(plane steps, path steps)``, coarse to fine) on one plane extent
    (`distance`), of the `shared` arms, cached in memory (`max_landscapes`) and on disk (`persist`).

    Example::

        >>> ex = Explorer()  # doctest: +SKIP
        >>> ex.landscape("vit-tiny", make_setting("wanda", 0.5), quick=True)  # doctest: +SKIP
    """

    def __init__(self, shared: Shared, levels: tuple[Level, ...], distance: float, probe_size: int,
                 max_landscapes: int = 48, persist: bool = True) -> None:
        self.shared, self.levels = shared, levels
        self.landscape_distance, self.probe_size = distance, probe_size
        self._memo = Memo(max_landscapes)
        self._store = LandscapeStore(persist)

    def _land_res(self, level: Level) -> tuple[int, int, float, str]:
        # "states": the slices move the BatchNorm statistics along with the weights (t = 0 is the original
        # model); landscapes cached before that are not reused
        return (level[0], level[1], self.landscape_distance, "states")

    def _land_key(self, la: Loaded, setting: Setting, level: Level) -> tuple:
        return (*la.point_prefix, setting.key(), self._land_res(level))

    def _cached_landscape(self, la: Loaded, setting: Setting, level: Level) -> dict[str, Any] | None:
        """One arm's landscape at `level` from memory, else from disk (then kept in memory), else None."""
        key = self._land_key(la, setting, level)
        got = self._memo.get(key)
        if got is not None:
            return got
        file = self._store.path(la.point_prefix, setting.key(), self._land_res(level),
                                          self.probe_size)
        stored = self._store.read(file)
        if stored is not None:
            self._memo.put(key, stored)
        return stored

    def _landscape_arm(self, la: Loaded, setting: Setting, level: Level,
                       cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        from craftlab.probes import landscape as L

        plane_steps, path_steps = level
        file = self._store.path(la.point_prefix, setting.key(), self._land_res(level),
                                          self.probe_size)

        def compute() -> dict[str, Any]:
            stored = self._store.read(file)
            if stored is not None:
                return stored
            raise_if(cancelled)
            t0 = time.perf_counter()
            loss_fn = cancellable_loss(cancelled)
            base = copy.deepcopy(la.model).requires_grad_(True)  # the probes write weights in place: private copies
            probe = la.ctx.probe
            # a coarser level's points lie on this one's grid (same extent and directions): not computed again
            prior = [got for lv in self.levels if lv != level
                     for got in [self._cached_landscape(la, setting, lv)] if got is not None]
            reuse = tuple(r for got in prior for r in (got["path"], got["plane"]))
            if setting.is_identity:
                def slices(reuse: tuple) -> tuple[Any, Any]:
                    return L.line_and_plane(base, probe, line_steps=path_steps, plane_steps=plane_steps,
                                            distance=1.0, seed=0, loss_fn=loss_fn, reuse=reuse)
            else:
                compressed = copy.deepcopy(self.shared.points.compressed_model(la, setting)).requires_grad_(True)

                # buffers=True: re-estimated BatchNorm statistics and folded offsets move along with the
                # weights, so t = 0 is the original model (its statistics) and t = 1 the compressed one;
                # path and plane in one pass (the path is the plane's beta = 0 line)
                def slices(reuse: tuple) -> tuple[Any, Any]:
                    return L.compression_slices(base, compressed, probe, path_steps=path_steps,
                                                plane_steps=plane_steps, distance=self.landscape_distance, seed=0,
                                                loss_fn=loss_fn, buffers=True, second_order=False, reuse=reuse)
            try:
                path, plane = slices(reuse)
            except ValueError:  # a coarser level computed otherwise (an older version's file): not reused
                reuse = ()
                path, plane = slices(reuse)
            if not setting.is_identity:
                known = next((r.meta for r in reuse if "grad_dot_delta" in r.meta), None)
                path = _with_second_order(path, base, compressed, probe, loss_fn, known)
            out = {"path": path, "plane": plane, "seconds": time.perf_counter() - t0}
            self._store.write(file, out)
            return out

        return memo_call(self._memo, self._land_key(la, setting, level), compute, cancelled,
                         background=self.shared.sched.in_background)

    def _answer(self, loaded: list[Loaded], results: list[dict[str, Any]], setting: Setting,
                level: Level) -> dict[str, dict[str, Any]]:
        final = level == self.levels[-1]
        res = {"plane_steps": level[0], "path_steps": level[1], "distance": self.landscape_distance, "final": final}
        return {la.arm.name: {"role": la.arm.role, "label": la.arm.label, "setting_label": setting.label(),
                              "resolution": res, **r} for la, r in zip(loaded, results)}

    def landscape(self, model: str, setting: Setting | str | None = None, progress: Any = None, quick: bool = False,
                  cancelled: Callable[[], bool] | None = None, wanted: Callable[[], bool] | None = None,
                  level: int | None = None, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Loss landscapes of both arms around the full-precision weights, the compressed point marked.

        For a compression setting: ``path`` is :func:`craftlab.probes.landscape.compression_path` (loss along
        ``w + t (C(w) − w)`` with its 2nd-order prediction) and ``plane`` is ``compression_plane`` (that
        direction and a random one), both from the compressed model :meth:`compress` made (cached). With no
        compression: a random filter-normalized ``line`` and ``plane``.

        The finest level already cached answers at once. Otherwise the fine level is computed (default), or,
        with `quick`, the coarse one, the fine one being queued for the background (dropped if ``wanted()``
        says no by then). `level` forces one level (an index of ``levels``). `cancelled()` gives up (raises
        :class:`~craftlab_app.common.concurrency.Cancelled`) within one forward pass.

        Returns ``{arm_name: {"role", "label", "setting_label", "resolution" ({"plane_steps", "path_steps",
        "distance", "final"}), "path", "plane", "seconds"}}``; cached per (checkpoint, setting, level).
        """
        setting = as_setting(setting, **kwargs)
        sched = self.shared.sched
        with contextlib.nullcontext() if sched.in_background else sched.foreground():
            loaded = self.shared.arms(model, progress)
            raise_if(cancelled)
            if level is None:
                for lv in reversed(self.levels):
                    got = [self._cached_landscape(la, setting, lv) for la in loaded]
                    if all(g is not None for g in got):
                        return self._answer(loaded, got, setting, lv)  # type: ignore[arg-type]
                lv = self.levels[0] if quick else self.levels[-1]
            else:
                lv = self.levels[level]
            results = sched.map(lambda la: self._landscape_arm(la, setting, lv, cancelled), loaded,
                                parallel_background=True)  # one low-priority thread per arm in the background
        if lv != self.levels[-1]:
            closing = self.shared.closing

            def stop() -> bool:  # the fine level gives up when the app closes or the view that asked is replaced
                return closing.is_set() or (wanted is not None and not wanted())

            sched.enqueue(-time.time() + 0.25, ("landscape", model, setting.key()), self.landscape, model, setting,
                          None, False, stop, None, len(self.levels) - 1, wanted=wanted)
        return self._answer(loaded, results, setting, lv)

    def landscape_level(self, model: str, setting: Setting) -> int | None:
        """Index of the finest level of `model`'s landscapes under `setting` available without computing, or None."""
        try:
            loaded = [self.shared.loader.loaded_if_cached(a) for a in self.shared.loader.resolve(model)]
        except (ValueError, OSError):
            return None
        if any(la is None for la in loaded):
            return None
        for i in range(len(self.levels) - 1, -1, -1):
            if all(self._land_key(la, setting, self.levels[i]) in self._memo for la in loaded):
                return i
        return None

    def has_landscape(self, model: str, setting: Setting) -> bool:
        """True when :meth:`landscape` of `model` under `setting` would answer from memory (any level)."""
        return self.landscape_level(model, setting) is not None
