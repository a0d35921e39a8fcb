"""What the CraftLab app computes: a plain fine-tuned model and its CrAFT (SAM) twin under compression.

:class:`Explorer` is what the app (and a notebook) calls. For a *model* (a zoo name, a timm name, or the
key of a cached run) it resolves the two fine-tuning **arms** (:mod:`craftlab_app.explore.arms`) — fine-tuning
whichever is not cached yet (on the app's one trainer, :mod:`craftlab_app.common.jobs`) — and answers:

* :meth:`Explorer.compress`: full-precision and compressed test accuracy of both arms for one setting;
* :meth:`Explorer.curves`: accuracy-vs-sparsity and accuracy-vs-bits curves *at the other current settings*,
  over the seeds (points computed in the background, persisted under ``$CRAFTLAB_HOME/explore``;
  :mod:`craftlab_app.explore.curves`);
* :meth:`Explorer.verdict`: both arms over the seeds at one setting, mean ± sd and the paired verdict of
  :mod:`craftlab.analysis.stats` (``Explorer.seeds``: the zoo models' extra seeds are fine-tuned in the
  background);
* :meth:`Explorer.sharpness`: λmax, Hessian trace and ε-sharpness of both full-precision arms, and
  :meth:`Explorer.sharpness_table` per arm and seed beside the accuracy drop (:mod:`craftlab_app.explore.sharpness`);
* :meth:`Explorer.landscape`: the loss along the compression direction ``w + t (C(w) − w)`` and on the
  plane it spans with a random direction, the compressed point marked; coarse first, then fine, and
  given up when a newer request replaces the one that asked (:mod:`craftlab_app.explore.landscapes`);
* a pair fine-tuned from the user's own pretraining run (the Train tab) is an Explore model too
  (:mod:`craftlab_app.explore.transfers`).

The Explorer is *composed*: its parts — :class:`~.curves.Curves`, :class:`~.sharpness.Sharpness`,
:class:`~.landscapes.Landscapes` — each receive the state they share (:class:`~.points.Shared`: the arms, the
points, the scheduler, the one trainer), and the Explorer's public methods are theirs.

Inputs are validated once, at the boundary: methods take a :class:`craftlab.settings.Setting` (or
:func:`craftlab.settings.make_setting` keyword arguments, turned into one Setting) and a
:class:`craftlab.train.runs.RunSpec`, and trust them.

Everything is cached and keyed by every input that matters: the checkpoint's content hash, the data
the numbers are measured on, and the normalized Setting. Caches are bounded LRUs and computations are
*single-flight* (:mod:`craftlab_app.common.concurrency`): concurrent callers asking for the same thing share one
computation. A compressed model is kept (a small LRU per arm and setting), so the landscape of the
setting just asked reuses the model ``compress`` made. Shared models are never mutated: compression
returns new models and every probe runs on a private deep copy, so any number of threads may call an
Explorer at once.

Speed notes (2 CPU cores): a point (compress + evaluate on the 359-image digits test split) takes
0.05-0.25 s with one intra-op thread; the two arms are computed in parallel threads. The app sets torch's
threads by :func:`craftlab.threads.configure_threads` (one thread for the zoo's tiny models: on a busy
machine, multi-threaded kernels can be 10-20x slower than one thread).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from craftlab._errors import check_sparsity
from craftlab.settings import DEFAULT_SETTING, Setting, parse_bits

from ..common.concurrency import Cancelled, Memo, Scheduler
from ..common.jobs import Trainer
from ..common.stores import PointStore
from .arms import Arm, Loaded
from .curves import Curves
from .landscapes import Landscapes
from .points import Points, Progress, Shared, as_setting
from .sharpness import Sharpness
from .transfers import TransferArmLoader

__all__ = ["BITS_GRID", "SEEDS", "SPARSITY_GRID", "Explorer", "as_setting"]

SPARSITY_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Sparsities of the accuracy-vs-sparsity curves (0.05 ... 0.95; 0 is the full-precision point)."""
BITS_GRID = (8, 7, 6, 5, 4, 3, 2)
"""Bit-widths of the accuracy-vs-bits curves (16 and float weights are added)."""
SEEDS = (0, 1, 2)
"""Seeds of a zoo / timm model's arms: seed 0 answers at once, the others are fine-tuned in the background."""


class Explorer:
    """Cached, thread-safe sweeps and probes over the two fine-tuning arms of a model.

    Args:
        epochs: fine-tuning epochs of the arms of a zoo / timm model (the runs ``craftlab demo`` makes).
        sam_rho: ρ of the CrAFT twin (and of the ε-sharpness probe).
        data: dataset the arms of a zoo / timm model are fine-tuned and measured on.
        seed: seed of the arms that answer first (landscapes and sharpness are of these).
        seeds: seeds of a zoo / timm model's arms for the uncertainty (mean ± sd, seed bands, the paired
            verdict); the ones other than `seed` are fine-tuned in the background by :meth:`warm`.
        sparsity_grid, bits_grid: the grids of the accuracy curves.
        probe_size: images in the probe batch (``DataBundle.probe_batches``: the first training images)
            used by sharpness and landscape probes.
        landscape_steps, path_steps, landscape_distance: resolution and extent of the (fine) landscapes.
        coarse_steps: ``(plane steps, path steps)`` of the quick first landscape of a new setting (used when
            coarser than the fine one; None: only the fine one).
        max_models, max_points, max_landscapes, max_compressed: bounds of the in-memory caches.
        persist: keep curve points, sharpness numbers and landscapes under ``$CRAFTLAB_HOME/explore``.
        workers: threads computing the arms of one request in parallel.

    Example::

        >>> ex = Explorer()
        >>> ex.compress("vit-tiny", method="wanda", sparsity=0.6)["arms"]  # doctest: +SKIP
    """

    def __init__(self, epochs: int = 8, sam_rho: float = 0.05, data: str = "digits", seed: int = 0,
                 seeds: Sequence[int] = SEEDS, sparsity_grid: Sequence[float] = SPARSITY_GRID,
                 bits_grid: Sequence[int] = BITS_GRID, probe_size: int = 128, landscape_steps: int = 13,
                 path_steps: int = 21, landscape_distance: float = 1.5, coarse_steps: tuple[int, int] | None = (5, 9),
                 max_models: int = 24, max_points: int = 200_000, max_landscapes: int = 48, max_compressed: int = 8,
                 persist: bool = True, workers: int = 2) -> None:
        if not (isinstance(epochs, int) and epochs >= 1):
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if not sam_rho > 0:
            raise ValueError(f"sam_rho of the CrAFT twin must be > 0, got {sam_rho!r}")
        self.epochs, self.sam_rho, self.data, self.seed = epochs, float(sam_rho), data, seed
        self.seeds = tuple(dict.fromkeys([seed, *seeds]))
        self.sparsity_grid = tuple(float(check_sparsity(s)) for s in sparsity_grid)
        self.bits_grid = tuple(int(parse_bits(b, "bits_grid")) for b in bits_grid)
        self.probe_size = int(probe_size)
        self.landscape_steps, self.path_steps = int(landscape_steps), int(path_steps)
        self.landscape_distance = float(landscape_distance)
        fine = (self.landscape_steps, self.path_steps)
        coarse = tuple(int(v) for v in coarse_steps) if coarse_steps else None
        self.levels = (coarse, fine) if coarse and coarse[0] < fine[0] and coarse[1] <= fine[1] else (fine,)
        self.persist = persist
        self._lock = threading.Lock()
        self._warm_state: dict[str, Any] = {"stage": "idle", "models": [], "error": None, "seed_runs": None}
        self._warm_threads: list[threading.Thread] = []
        self._seed_lock = threading.Lock()
        self._seeding: set[str] = set()
        self.jobs = Trainer(self.sam_rho)
        """The app's one trainer (runs take turns); the Train tab's service trains on it too."""
        sched = Scheduler(workers, on_idle=self.flush, on_error=self._background_error)
        self._sched = sched
        self.points = Points(sched, PointStore(persist), max_points, max_compressed)
        self.shared = Shared(TransferArmLoader(data, epochs, seed, self.sam_rho, self.probe_size, max_models),
                             self.jobs, sched, self.points, Memo(max(4 * max_models, 16)))
        # the parts, each given the shared state; the Explorer's public methods below are theirs
        self.curve_part = Curves(self.shared, seed, self.seeds, self.sparsity_grid, self.bits_grid)
        self.sharpness_part = Sharpness(self.shared, self.curve_part, self.sam_rho)
        self.landscape_part = Landscapes(self.shared, self.levels, self.landscape_distance, self.probe_size,
                                         max_landscapes, persist)
        c, sh, la = self.curve_part, self.sharpness_part, self.landscape_part
        self.curve_settings, self.curves, self.schedule_curves = c.curve_settings, c.curves, c.schedule_curves
        self.seed_arms, self.seed_points, self.verdict = c.seed_arms, c.seed_points, c.verdict
        self.missing_seed_runs, self.expected_seeds = c.missing_seed_runs, c.expected_seeds
        self.sharpness, self.sharpness_table, self.cached_sharpness = sh.sharpness, sh.sharpness_table, sh.cached
        self.landscape, self.landscape_level, self.has_landscape = la.landscape, la.landscape_level, la.has_landscape

    @property
    def resolution(self) -> tuple[int, int, float]:
        """(plane steps, path steps, plane distance) of the fine landscapes."""
        return (self.landscape_steps, self.path_steps, self.landscape_distance)

    # ------------------------------------------------------------------ models and arms

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a model picker: the zoo (both arms), then every cached run."""
        return self.shared.loader.model_choices()

    def resolve(self, model: str) -> list[Arm]:
        """The arms of `model` (plain first), without building anything (see :meth:`ArmLoader.resolve`)."""
        return self.shared.loader.resolve(model)

    def describe(self, model: str) -> str:
        """A readable name of `model` (a cached run's model, data, arm, epochs and seed instead of its key)."""
        return self.shared.loader.describe(model)

    def has_batchnorm(self, model: str) -> bool:
        """True when `model`'s arms have BatchNorm layers (BN re-estimation after pruning applies), from
        the loaded arms (False when they are not loaded yet)."""
        from torch.nn.modules.batchnorm import _BatchNorm

        try:
            loaded = [self.shared.loader.loaded_if_cached(a) for a in self.resolve(model)]
        except (ValueError, OSError):
            return False
        return any(la is not None and any(isinstance(m, _BatchNorm) for m in la.model.modules()) for la in loaded)

    def arms(self, model: str, progress: Progress | None = None) -> list[Loaded]:
        """Load (fine-tuning first when needed) the arms of `model`; progress(fraction, text) while training."""
        return self.shared.arms(model, progress)

    def compress(self, model: str, setting: Setting | str | None = None, progress: Progress | None = None,
                 **kwargs: Any) -> dict[str, Any]:
        """Full-precision and compressed test accuracy of both arms of `model` under `setting`.

        `setting` is a :class:`Setting` (or a label), or given as keyword arguments of :func:`make_setting`.
        Returns ``{"model", "setting", "setting_label", "setting_text", "arms": {arm_name: {"role", "label",
        "checkpoint", "fp_accuracy", "compressed_accuracy", "accuracy_drop", "fp_loss", "compressed_loss",
        "sparsity_measured", "size_mb", "fp_size_mb", "n"}}}``; deterministic for given inputs.
        """
        setting = as_setting(setting, **kwargs)
        with self._sched.foreground():
            loaded = self.arms(model, progress)

            cheap = self.cheap_baseline(model, setting)

            def one(la: Loaded) -> dict[str, Any]:
                fp = self.points.point(la, DEFAULT_SETTING)
                cp = self.points.point(la, setting)
                out = {"role": la.arm.role, "label": la.arm.label, "checkpoint": la.path.name,
                       "fp_accuracy": fp["accuracy"], "compressed_accuracy": cp["accuracy"],
                       "accuracy_drop": fp["accuracy"] - cp["accuracy"], "fp_loss": fp["loss"],
                       "compressed_loss": cp["loss"], "sparsity_measured": cp["sparsity_measured"],
                       "size_mb": cp["size_mb"], "fp_size_mb": fp["size_mb"], "n": cp["n"]}
                if cheap is not None:  # the same compression with BN re-estimated and no compensation
                    cheap_point = self.points.point(la, cheap)
                    out["cheap_baseline"] = {"label": cheap.label(), "accuracy": cheap_point["accuracy"]}
                return out

            results = self._sched.map(one, loaded)
        return {"model": model.strip(), "setting": setting.as_dict(), "setting_label": setting.label(),
                "setting_text": setting.describe(), "arms": {la.arm.name: r for la, r in zip(loaded, results)}}

    def cheap_baseline(self, model: str, setting: Setting) -> Setting | None:
        """For a compensated setting on a BatchNorm model without BN re-estimation: the same compression with BN
        re-estimated and no compensation (the cheap fix of the same per-channel error, issue 19), else None."""
        if setting.compensation is None or setting.recalibrate_bn or not self.has_batchnorm(model):
            return None
        return replace(setting, compensation=None, recalibrate_bn=True)

    # ------------------------------------------------------------------ background work

    def pending(self) -> int:
        """Background jobs not yet done."""
        return self._sched.pending()

    def _background_error(self, err: BaseException) -> None:
        if isinstance(err, Cancelled):
            return
        with self._lock:
            self._warm_state["error"] = f"{type(err).__name__}: {err}"

    def warm(self, models: Sequence[str], setting: Setting | None = None, curves: bool = True,
             probes: bool = True, extra: Sequence[tuple[str, Setting]] = (), seeds: bool = True) -> threading.Thread:
        """Prepare `models` in the background: fine-tune missing arms, then the first model's sharpness and
        landscape at `setting`, every model's curve points at `setting`, the curve points of the `extra`
        (model, setting) pairs (the presets), and with `seeds` the extra seeds' arms (fine-tuned at a low
        priority, one at a time) and their points. Returns the thread; :meth:`status` reports progress."""
        setting = setting or DEFAULT_SETTING
        models = list(models)

        def run() -> None:
            try:
                for m in models:
                    with self._lock:
                        self._warm_state.update(stage=f"loading or fine-tuning {m}", models=models)
                    self.arms(m)
                with self._lock:
                    self._warm_state["stage"] = "ready"
                if probes and models:
                    self._sched.enqueue(1, ("sharpness", models[0]), self.sharpness, models[0])
                    self._sched.enqueue(1, ("landscape", models[0], setting.key()), self.landscape, models[0],
                                        setting)
                if curves:
                    self.schedule_curves(models, setting, priority=2)
                    for i, (m, s) in enumerate(extra):
                        self.schedule_curves([m], s, priority=3 + 0.01 * i)
                if seeds:
                    with self._lock:
                        self._seeding.update(models)
                    self._train_seeds(models, [(m, setting) for m in models] + list(extra))
            except Cancelled:  # the explorer is closing
                pass
            except Exception as err:
                with self._lock:
                    self._warm_state.update(stage="failed", error=f"{type(err).__name__}: {err}")

        t = threading.Thread(target=run, name="craftlab-explore-warm", daemon=True)
        self._warm_threads.append(t)
        t.start()
        return t

    def _train_seeds(self, models: Sequence[str], views: Sequence[tuple[str, Setting]]) -> None:
        """Fine-tune the extra seeds' arms of `models` (low priority, one at a time), then queue their points
        of `views`."""
        with self._seed_lock:
            specs = [s for m in models for s in self.missing_seed_runs(m)]
            with self._lock:
                runs = self._warm_state["seed_runs"] or {"done": 0, "total": 0}
                self._warm_state["seed_runs"] = {"done": runs["done"], "total": runs["total"] + len(specs)}
            for spec in specs:
                if self.shared.closing.is_set():
                    return
                self.jobs.train([spec], background=True)
                with self._lock:
                    runs = self._warm_state["seed_runs"]
                    self._warm_state["seed_runs"] = {"done": runs["done"] + 1, "total": runs["total"]}
        for i, (m, s) in enumerate(views):
            self.schedule_curves([m], s, priority=4 + 0.01 * i)

    def ensure_seeds(self, model: str) -> None:
        """Fine-tune a zoo model's extra seeds in the background if they are missing (once per model); other
        models (timm names, cached runs) keep the seeds they have."""
        from craftlab.models import zoo_names

        if model not in zoo_names() or len(self.seeds) < 2:
            return
        with self._lock:
            if model in self._seeding:
                return
            self._seeding.add(model)
        if not self.missing_seed_runs(model):
            return
        t = threading.Thread(target=self._train_seeds, args=([model], []), name="craftlab-explore-seeds", daemon=True)
        self._warm_threads.append(t)
        t.start()

    def status(self) -> dict[str, Any]:
        """Warm-up stage, runs being fine-tuned (epochs done / total), extra-seed runs and background jobs pending."""
        with self._lock:
            state = dict(self._warm_state)
        return {**state, "runs": self.jobs.status(), "pending": self._sched.pending()}

    def flush(self) -> None:
        """Write the dirty on-disk point stores now (the background worker also does this when idle)."""
        store = self.points.store
        for prefix in store.take_dirty():
            store.write(prefix, self.points.memo.with_prefix(prefix), self.shared.sharpness.get(prefix))

    def close(self) -> None:
        """Stop the background work — extra-seed runs (after their current epoch), the warm-up, the worker —
        then write the point stores and stop the thread pool."""
        self.shared.closing.set()
        self.jobs.close()
        for t in self._warm_threads:
            t.join(60)
        self._sched.close()
        self.flush()
