"""Sharpness, a part of the app's :class:`~craftlab_app.explore.service.Explorer`: both full-precision arms of a model,
per seed, and the table behind the gap plot and the sharpness-vs-accuracy-drop scatter (issue 15).

Seed 0's arms answer in the foreground (:meth:`Sharpness.sharpness`); the extra seeds' arms are measured in
the background (:meth:`Sharpness.sharpness_table` queues them), so the scatter gains points as they come.
Each number is :func:`craftlab.probes.sharpness.sharpness_summary` on the probe batch, cached per checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd

from craftlab.settings import Setting

from ..common.concurrency import HVP_LOCK
from .arms import Loaded
from .curves import Curves
from .points import Shared

__all__ = ["MEASURES", "Sharpness"]

MEASURES = {"lambda_max": "λmax", "trace": "Hessian trace", "eps_sharpness": "ε-sharpness"}
"""The sharpness measures the app shows (column → how people read it); smaller = flatter for each."""


class Sharpness:
    """λmax, Hessian trace and ε-sharpness per arm and seed, on the `shared` arms (the seeds' arms from `curves`).

    Example::

        >>> ex = Explorer()  # doctest: +SKIP
        >>> ex.sharpness("resnet-tiny")  # {arm name: {"role", "label", "lambda_max", "trace", ...}}  # doctest: +SKIP
    """

    def __init__(self, shared: Shared, curves: Curves, sam_rho: float) -> None:
        self.shared, self.curves, self.sam_rho = shared, curves, sam_rho

    def _sharpness_of(self, la: Loaded) -> dict[str, Any]:
        """The sharpness numbers of one loaded arm (computed once per checkpoint, then cached and persisted)."""
        from craftlab.probes.sharpness import sharpness_summary

        computed = []

        def compute() -> dict[str, Any]:
            probe_model = copy.deepcopy(la.model).requires_grad_(True)  # probes perturb weights in place
            with HVP_LOCK:  # see craftlab_app.common.concurrency.HVP_LOCK
                res = sharpness_summary(probe_model, la.ctx.probe, rho=self.sam_rho, seed=0)
            out = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                   for k, v in res.items()}
            out["n_examples"] = sum(len(y) for _, y in la.ctx.probe)
            computed.append(True)
            return out

        out = self.shared.sharpness.get_or_compute(la.point_prefix, compute,
                                             background=self.shared.sched.in_background)
        if computed:
            self.shared.points.store.mark_dirty(la.point_prefix)
        return out

    def sharpness(self, model: str, progress: Any = None) -> dict[str, dict[str, Any]]:
        """λmax, Hessian trace (± stderr) and ε-sharpness (ρ = the explorer's) of each full-precision arm.

        Measured on the probe batch with :func:`craftlab.probes.sharpness.sharpness_summary`; cached per checkpoint.
        """
        with self.shared.sched.foreground():
            loaded = self.shared.arms(model, progress)
            results = self.shared.sched.map(self._sharpness_of, loaded)
        return {la.arm.name: {"role": la.arm.role, "label": la.arm.label, **r} for la, r in zip(loaded, results)}

    def cached(self, model: str) -> dict[str, dict[str, Any] | None]:
        """{role: the sharpness numbers of `model`'s arm (seed of the Explorer), or None}: never computes a probe."""
        return {la.arm.role: self.shared.sharpness.get(la.point_prefix) for la in self.shared.arms(model)}

    def sharpness_table(self, model: str, setting: Setting, schedule: bool = True) -> pd.DataFrame:
        """One row per arm and seed whose sharpness and accuracy at `setting` are known: ``seed, role, label,
        lambda_max, trace, eps_sharpness, fp_accuracy, accuracy, accuracy_drop``. Missing sharpness numbers and
        points of the cached seeds are queued for the background with `schedule` (call again for them)."""
        rows = []
        cols = ["seed", "role", "label", *MEASURES, "fp_accuracy", "accuracy", "accuracy_drop"]
        for seed, loaded in self.curves.seed_arms(model).items():
            for la in loaded:
                sharp = self.shared.sharpness.get(la.point_prefix)
                fp, cp = self.shared.points.cached(la, Setting()), self.shared.points.cached(la, setting)
                if schedule and sharp is None:
                    self.shared.sched.enqueue(5 + 0.01 * seed, ("sharpness", la.fingerprint), self._sharpness_of, la)
                if schedule:
                    for s, p in ((Setting(), fp), (setting, cp)):
                        if p is None:
                            key = ("point", la.fingerprint, la.ctx.key, s.key())
                            self.shared.sched.enqueue(4 + 0.01 * seed, key, self.shared.points.point, la, s)
                if sharp is None or fp is None or cp is None:
                    continue
                rows.append({"seed": seed, "role": la.arm.role, "label": la.arm.label,
                             **{m: sharp.get(m) for m in MEASURES}, "fp_accuracy": fp["accuracy"],
                             "accuracy": cp["accuracy"], "accuracy_drop": fp["accuracy"] - cp["accuracy"]})
        return pd.DataFrame(rows, columns=cols)
