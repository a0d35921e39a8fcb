"""Curves, seeds and the paired verdict: a part of the app's :class:`~craftlab_app.explore.service.Explorer`.

* **Curves at the other current settings.** The accuracy-vs-sparsity curve is drawn at the chosen bits (and
  BatchNorm choice), the accuracy-vs-bits curve at the chosen pruning and activation bits, so the current
  setting (the star) lies on both curves. Bits run over the grid, then 16 and float weights (x positions 9
  and 10, labelled ``16`` and ``FP``); with N:M, the N:M patterns are extra points of the sparsity plot.
* **Seeds.** A zoo or timm model's arms exist for every seed of ``Explorer.seeds`` (the extra seeds are
  fine-tuned in the background); a curve point is measured on each seed's arms, and the curves show the
  mean with a ±1 sd band over the seeds available.
* **Verdict.** :meth:`Curves.verdict` pairs the arms by seed at the current setting with
  :func:`craftlab.analysis.stats.compare_arms` and :func:`craftlab.analysis.stats.claim_verdict`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from craftlab.settings import Setting, make_setting, parse_pattern

from ..common.concurrency import raise_if
from ..common.jobs import is_cached
from .arms import Loaded
from .links import NM_PATTERNS
from .points import Shared

__all__ = ["BITS_X", "NM_PATTERNS", "Curves", "bits_x"]

BITS_X = {16: 9.0, None: 10.0}
"""x positions of 16-bit and float weights on the accuracy-vs-bits axis (2..8 sit at their value)."""


def bits_x(bits: int | None) -> float:
    """x position of a weight bit-width on the accuracy-vs-bits axis (:data:`BITS_X`)."""
    return BITS_X[bits] if bits in BITS_X else float(bits)  # type: ignore[arg-type]


def _quant(setting: Setting) -> dict[str, Any]:
    return {"w_bits": setting.w_bits, "a_bits": setting.a_bits, "granularity": setting.granularity,
            "a_granularity": setting.a_granularity, "recipe": setting.recipe}


def _point(setting: Setting, **kwargs: Any) -> Setting:
    """A curve point at `setting`'s other choices: its compensation applies where the point compresses something
    (the uncompressed end of a curve has nothing to compensate)."""
    point = make_setting(**kwargs)
    if setting.compensation is None or point.is_identity:
        return point
    return make_setting(**kwargs, compensation=setting.compensation)


def _prune(setting: Setting) -> dict[str, Any]:
    if setting.method == "N:M":
        return {"method": setting.pattern, "nm_score": setting.nm_score}
    return {"method": setting.method, "sparsity": setting.sparsity}


class Curves:
    """Curve settings, curve tables over seeds, seed points and the verdict, on the `shared` arms and points.

    Example::

        >>> ex = Explorer()  # doctest: +SKIP
        >>> ex.curves("vit-tiny", make_setting("wanda", 0.5))["done"]  # doctest: +SKIP
    """

    def __init__(self, shared: Shared, seed: int, seeds: tuple[int, ...], sparsity_grid: tuple[float, ...],
                 bits_grid: tuple[int, ...]) -> None:
        self.shared, self.seed, self.seeds = shared, seed, seeds
        self.sparsity_grid, self.bits_grid = sparsity_grid, bits_grid
        self._settings: dict[str, list[tuple[str, str, float, Setting]]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ which settings a curve holds

    def curve_settings(self, setting: Setting | None = None) -> list[tuple[str, str, float, Setting]]:
        """(curve, series, x, setting) of every point of the curves drawn for `setting`: ``sparsity`` (its
        pruning method from 0 to the grid's end, at its bits), ``nm`` (N:M patterns, for an N:M setting) and
        ``bits`` (weight bits of the grid, 16 and float, at its pruning and activation bits)."""
        setting = setting or Setting()
        key = setting.key()
        cached = self._settings.get(key)
        if cached is not None:  # made once per setting: the app polls curves every second or so
            return cached
        bn = setting.recalibrate_bn
        if setting.method == "N:M":
            method = setting.nm_score
        else:
            method = setting.method if setting.method != "none" else "magnitude"
        xs = sorted({0.0, *self.sparsity_grid} | ({setting.sparsity} if setting.method == method else set()))
        out = [("sparsity", method, x, _point(setting, method=method, sparsity=x, recalibrate_bn=bn, **_quant(setting)))
               for x in xs]
        if setting.method == "N:M":
            for pat in NM_PATTERNS:
                n, m = parse_pattern(pat)
                out.append(("nm", pat, round(1 - n / m, 6),
                            _point(setting, method=pat, nm_score=setting.nm_score, recalibrate_bn=bn,
                                   **_quant(setting))))
        series = "float activations" if setting.a_bits is None else f"A{setting.a_bits}"
        for b in (*sorted(set(self.bits_grid)), 16, None):
            q = {**_quant(setting), "w_bits": b}
            out.append(("bits", series, bits_x(b), _point(setting, recalibrate_bn=bn, **_prune(setting), **q)))
        with self._lock:
            if len(self._settings) > 256:
                self._settings.clear()
            self._settings[key] = out
        return out

    # ------------------------------------------------------------------ seeds

    def seed_arms(self, model: str, load: bool = True) -> dict[int, list[Loaded]]:
        """{seed: loaded arms} of `model` for the seeds whose runs are cached (the primary seed is fine-tuned
        if needed). A cached run's key has its own seed only."""
        out = {self.seed: self.shared.arms(model)}
        for seed in self.seeds:
            if seed == self.seed:
                continue
            arms = self.shared.loader.resolve(model, seed)
            if arms and all(a.path is not None or is_cached(a.spec) for a in arms):
                if load:
                    out[seed] = self.shared.sched.map(self.shared.load, arms)
        return dict(sorted(out.items()))

    def missing_seed_runs(self, model: str) -> list[Any]:
        """RunSpecs of `model`'s extra-seed arms not fine-tuned yet."""
        out = []
        for seed in self.seeds:
            for a in self.shared.loader.resolve(model, seed):
                if a.path is None and not is_cached(a.spec):
                    out.append(a.spec)
        return out

    def seed_points(self, model: str, setting: Setting, compute: bool = True,
                    cancelled: Callable[[], bool] | None = None) -> pd.DataFrame:
        """Accuracy of every cached seed's arms at `setting` (and in full precision): columns ``seed, role,
        label, fp_accuracy, accuracy, n``. `compute`: measure missing points now (in parallel); else only
        what is cached."""
        rows, todo = [], []
        for seed, loaded in self.seed_arms(model).items():
            for la in loaded:
                todo.append((seed, la))

        def one(item: tuple[int, Loaded]) -> dict[str, Any] | None:
            seed, la = item
            raise_if(cancelled)
            get = self.shared.points.point if compute else self.shared.points.cached
            fp, cp = get(la, Setting()), get(la, setting)
            if fp is None or cp is None:
                return None
            return {"seed": seed, "role": la.arm.role, "label": la.arm.label, "fp_accuracy": fp["accuracy"],
                    "accuracy": cp["accuracy"], "n": cp["n"]}

        with self.shared.sched.foreground() if compute else contextlib.nullcontext():
            for r in self.shared.sched.map(one, todo) if compute else [one(t) for t in todo]:
                if r is not None:
                    rows.append(r)
        return pd.DataFrame(rows, columns=["seed", "role", "label", "fp_accuracy", "accuracy", "n"])

    def verdict(self, model: str, setting: Setting, compute: bool = False,
                cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Both arms at `setting` over the seeds: mean ± sd per arm, and the paired comparison (CrAFT − plain,
        paired by seed) from :func:`craftlab.analysis.stats.compare_arms` / ``claim_verdict``.

        Returns ``{"seeds", "expected_seeds", "arms": {role: {"label", "mean", "sd", "fp_mean", "values"}},
        "point_pts", "comparison" (or None with < 2 paired seeds), "status", "text"}``; accuracies in [0, 1].
        """
        from craftlab.analysis.stats import claim_verdict, compare_arms

        df = self.seed_points(model, setting, compute=compute, cancelled=cancelled)
        arms: dict[str, Any] = {}
        for role, part in df.groupby("role", sort=False):
            acc = part["accuracy"].astype(float)
            arms[role] = {"label": part["label"].iloc[0], "mean": float(acc.mean()),
                          "sd": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
                          "fp_mean": float(part["fp_accuracy"].mean()), "values": acc.tolist(),
                          "seeds": part["seed"].astype(int).tolist()}
        n_test = int(df["n"].max()) if len(df) else 0
        out: dict[str, Any] = {"seeds": sorted(set(df["seed"].astype(int))) if len(df) else [],
                               "expected_seeds": len(self.expected_seeds(model)), "arms": arms,
                               "point_pts": 100.0 / n_test if n_test else float("nan"), "comparison": None,
                               "status": None, "text": "", "setting_label": setting.label()}
        if {"plain", "craft"} <= set(arms):
            paired = set(arms["plain"]["seeds"]) & set(arms["craft"]["seeds"])
            if len(paired) >= 2:
                table = compare_arms(df.assign(setting=setting.label()), "plain", "craft", value="accuracy",
                                     by="setting", pair="seed", arm="role")
                v = claim_verdict(table, claim=f"CrAFT keeps more test accuracy than {arms['plain']['label']} "
                                              f"at {setting.label()}", scale=100, unit=" pts")
                out.update(comparison=table.iloc[0].to_dict(), status=v.status, text=v.text)
        return out

    def expected_seeds(self, model: str) -> list[int]:
        """The seeds `model` will have: every seed for a zoo model (the missing ones are fine-tuned in the
        background), the cached ones otherwise (one for a cached run's key)."""
        from craftlab.models import zoo_names

        try:
            if model in zoo_names():
                return list(self.seeds)
            return [s for s in self.seeds if (arms := self.shared.loader.resolve(model, s))
                    and all(a.path is not None or is_cached(a.spec) for a in arms)]
        except ValueError:
            return [self.seed]

    # ------------------------------------------------------------------ curve tables

    def curves(self, model: str, setting: Setting | None = None, schedule: bool = True,
               wanted: Callable[[], bool] | None = None, priority: float | None = None) -> dict[str, Any]:
        """Accuracy curves of both arms for `setting` (see :meth:`curve_settings`) over the cached seeds; missing
        points are queued for the background (primary seed first, ahead of older requests).

        Returns ``{"sparsity": DataFrame(arm, role, label, method, sparsity, accuracy, seed), "nm": DataFrame(...,
        pattern, sparsity, ...), "bits": DataFrame(..., series, bits (x position), w_bits, accuracy, seed),
        "done", "total", "complete", "seeds", "setting_label"}``. Call again (the app polls) for the points
        computed since.
        """
        setting = setting or Setting()
        seeds = self.seed_arms(model)
        rows: dict[str, list[dict[str, Any]]] = {"sparsity": [], "nm": [], "bits": []}
        missing: list[tuple[int, Loaded, Setting]] = []
        points = self.curve_settings(setting)
        for seed, loaded in seeds.items():
            for la in loaded:
                for curve, series, x, s in points:
                    p = self.shared.points.cached(la, s)
                    if p is None:
                        missing.append((seed, la, s))
                        continue
                    row = {"arm": la.arm.name, "role": la.arm.role, "label": la.arm.label,
                           "accuracy": p["accuracy"], "seed": seed}
                    if curve == "sparsity":
                        row.update(method=series, sparsity=x)
                    elif curve == "nm":
                        row.update(pattern=series, sparsity=x)
                    else:
                        row.update(series=series, bits=x, w_bits=s.w_bits)
                    rows[curve].append(row)
        if schedule and missing:
            base = -time.time() if priority is None else priority
            for seed, la, s in missing:
                self.shared.sched.enqueue(base + (0.0 if seed == self.seed else 0.5),
                                    ("point", la.fingerprint, la.ctx.key, s.key()), self.shared.points.point, la, s,
                                    wanted=wanted)
        total = len(points) * sum(len(v) for v in seeds.values())
        cols = {"sparsity": ["arm", "role", "label", "method", "sparsity", "accuracy", "seed"],
                "nm": ["arm", "role", "label", "pattern", "sparsity", "accuracy", "seed"],
                "bits": ["arm", "role", "label", "series", "bits", "w_bits", "accuracy", "seed"]}
        frames = {k: pd.DataFrame(v, columns=cols[k]) for k, v in rows.items()}
        return {**frames, "done": total - len(missing), "total": total, "complete": not missing,
                "seeds": sorted(seeds), "expected_seeds": len(self.expected_seeds(model)),
                "setting_label": setting.label()}

    def schedule_curves(self, models: Sequence[str], setting: Setting, priority: float) -> None:
        """Queue the curve points of `models` at `setting` (the warm-up and the presets)."""
        for i, m in enumerate(models):
            self.curves(m, setting, schedule=True, priority=priority + 0.01 * i)

