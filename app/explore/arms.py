"""The two fine-tuning arms of a model, and loading them with the data they are measured on.

A *model* in the app is a zoo name, a timm name or the key of a cached run. :class:`ArmLoader` resolves
it into two :class:`Arm` s — the plain run (the optimizer alone) and its CrAFT twin (same schedule and
seed, + SAM) — and loads an arm into a :class:`Loaded`: the shared read-only model, a fingerprint of the
checkpoint's content (every cache is keyed by it, so a checkpoint changed on disk is reloaded) and a
:class:`Context` (test tensors, calibration batches, the probe batch).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from craftlab import cache
from craftlab.checkpoint import SIDECAR, WEIGHTS, CheckpointError, load_checkpoint, read_meta
from craftlab.train.runs import RunSpec, arm_label, find_run, list_runs, run_dir, unknown_model

from ..common.concurrency import Memo
from ..common.jobs import role_of
from ..common.stores import EVAL_VERSION

__all__ = ["Arm", "ArmLoader", "Context", "Loaded"]


@dataclass(frozen=True)
class Arm:
    """One fine-tuning arm of a model: ``role`` ``"plain"`` (the optimizer alone) or ``"craft"`` (+ SAM).

    ``spec`` says how to (re)build it with :func:`craftlab.get_run`; ``path`` is a fixed checkpoint
    folder (a cached run chosen by its key), ``None`` when the arm is ``run_dir(spec)``. ``label`` is the
    core's :func:`craftlab.train.runs.arm_label` (``AdamW``, ``SAM ρ=0.05``).
    """

    role: str
    name: str
    label: str
    spec: RunSpec | None
    path: str | None = None

    @property
    def checkpoint(self) -> Path:
        return Path(self.path) if self.path else run_dir(self.spec)  # type: ignore[arg-type]

    @classmethod
    def of(cls, spec: RunSpec, path: str | None = None) -> Arm:
        return cls(role_of(spec), spec.arm, arm_label(spec), spec, path)


def _spec_from_meta(meta: dict[str, Any]) -> RunSpec | None:
    run = meta.get("run")
    if not isinstance(run, dict):
        return None
    names = {f.name for f in fields(RunSpec)}
    try:
        return RunSpec(**{k: v for k, v in run.items() if k in names})
    except TypeError:
        return None


@dataclass
class Context:
    """The data an arm is measured on: test tensors, calibration batches, the probe batch."""

    key: str
    data_name: str
    test: list[tuple[torch.Tensor, torch.Tensor]]
    calib: list[tuple[torch.Tensor, torch.Tensor]]
    probe: list[tuple[torch.Tensor, torch.Tensor]]
    example: torch.Tensor


@dataclass
class Loaded:
    """A loaded arm: the shared (read-only) model, its content fingerprint and its data context."""

    arm: Arm
    path: Path
    fingerprint: str
    model: nn.Module
    ctx: Context
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def point_prefix(self) -> tuple[str, str]:
        return (self.fingerprint, self.ctx.key)


def _tensors(loader: Any, chunk: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    return [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(y), chunk)]


class ArmLoader:
    """Resolves models into arms and loads them (bounded, single-flight caches; thread-safe).

    Args:
        data, epochs, seed: the run of a zoo / timm model's arms (``RunSpec(model, data, epochs, seed)``).
        sam_rho: ρ of the CrAFT twin.
        probe_size: images in the probe batch (``DataBundle.probe_batches``).
        max_models: loaded arms kept in memory.
    """

    def __init__(self, data: str, epochs: int, seed: int, sam_rho: float, probe_size: int, max_models: int) -> None:
        self.data, self.epochs, self.seed, self.sam_rho = data, epochs, seed, sam_rho
        self.probe_size = probe_size
        self._models = Memo(max_models)
        self._contexts = Memo(4)
        self._fingerprints: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a model picker: the zoo (both arms), then every cached run."""
        from craftlab.models import zoo_names

        out = [(f"{z} (AdamW vs CrAFT)", z) for z in zoo_names()]
        for r in list_runs():
            acc = r.get("test_accuracy")
            try:
                name = self.describe(r["key"])
            except (ValueError, OSError):
                name = r["key"]
            out.append((name + (f" ({acc:.1%})" if isinstance(acc, float) else ""), r["key"]))
        return out

    def resolve(self, model: str, seed: int | None = None) -> list[Arm]:
        """The arms of `model` (plain first), without building anything. Raises ValueError for an unknown name.

        * a zoo or timm name: ``RunSpec(model, data, epochs, seed)`` and its twin with ``sam_rho`` (`seed`:
          the loader's seed by default);
        * the key of a cached run (see :func:`craftlab.list_runs`): that checkpoint, and its twin (only its
          own seed: another `seed` gives no arms).
        """
        from craftlab.models import is_known_model, zoo_names

        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a zoo name, a cached run or a timm name, got {model!r}")
        name = model.strip()
        if find_run(name) is not None:
            arms = self._resolve_run(name)
            own = arms[0].spec.seed if arms[0].spec is not None else None
            return arms if seed is None or seed == own else []
        if name in zoo_names() or is_known_model(name):
            base = RunSpec(model=name, data=self.data, epochs=self.epochs, seed=self.seed if seed is None else seed)
            return [Arm.of(base), Arm.of(base.twin(self.sam_rho))]
        raise unknown_model(name)

    def describe(self, model: str) -> str:
        """A readable name of `model`: a zoo / timm name as is, a cached run as ``vit-tiny · digits · AdamW
        · 3 epochs · seed 0`` (its arm label, not its key)."""
        name = str(model).strip()
        if find_run(name) is None:
            return name
        spec = next((a.spec for a in self._resolve_run(name) if a.path is not None), None)
        if spec is None:
            return name
        lr = "" if spec.lr is None else f" · lr {spec.lr:g}"
        return (f"{spec.model} · {spec.data} · {arm_label(spec)}{lr} · {spec.epochs} epoch"
                f"{'s' if spec.epochs != 1 else ''} · seed {spec.seed}")

    def _resolve_run(self, name: str) -> list[Arm]:
        """A cached run's arms: its checkpoint and its twin (one arm when the sidecar names no run)."""
        path = find_run(name)
        if path is None:
            raise unknown_model(name)
        meta = read_meta(path)  # CheckpointError names a damaged sidecar
        spec = _spec_from_meta(meta)
        if spec is None:
            rho = float(meta.get("sam_rho") or 0.0)
            return [Arm("craft" if rho > 0 else "plain", str(meta.get("arm") or name), name, None, str(path))]
        arms = [Arm.of(spec, str(path)), Arm.of(spec.twin(self.sam_rho))]
        return sorted(arms, key=lambda a: a.role != "plain")

    def fingerprint(self, path: Path) -> str:
        """Fingerprint of the weights file's bytes and the architecture (memoized per file size and mtime): the
        bytes, not the sidecar's hash, so weights damaged or replaced on disk never answer from a cache."""
        w, s = path / WEIGHTS, path / SIDECAR
        try:
            sw, ss = w.stat(), s.stat()
        except FileNotFoundError as err:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {Path(err.filename).name}") from None
        key = (str(path), sw.st_mtime_ns, sw.st_size, ss.st_mtime_ns, ss.st_size)
        with self._lock:
            fp = self._fingerprints.get(key)
        if fp is None:
            meta = read_meta(path)
            fp = cache.fingerprint([cache.file_sha256(w), meta.get("architecture")])
            with self._lock:
                if len(self._fingerprints) > 256:
                    self._fingerprints.clear()
                self._fingerprints[key] = fp
        return fp

    def context(self, data_name: str, model: nn.Module) -> Context:
        """The measurement data of `data_name` in `model`'s input configuration (cached)."""
        from craftlab.data import load_data
        from craftlab.models import input_config

        cfg = input_config(model)
        ckey = json.dumps([data_name, list(cfg.get("input_size", [])), list(cfg.get("mean", [])),
                           list(cfg.get("std", [])), EVAL_VERSION])

        def build() -> Context:
            data = load_data(data_name, model=model)
            test = _tensors(data.test)
            return Context(cache.fingerprint(ckey)[:16], data_name, test, _tensors(data.calib),
                           data.probe_batches(self.probe_size), test[0][0][:1])

        return self._contexts.get_or_compute(ckey, build)

    def load(self, arm: Arm) -> Loaded:
        """The loaded arm (its checkpoint must exist: fine-tune first)."""
        path = arm.checkpoint
        fp = self.fingerprint(path)

        def build() -> Loaded:
            model = load_checkpoint(path)
            model.requires_grad_(False)
            meta = getattr(model, "craftlab_meta", {})
            data_name = (arm.spec.data if arm.spec is not None else (meta.get("data") or {}).get("name")) or self.data
            return Loaded(arm, path, fp, model, self.context(data_name, model), meta)

        loaded = self._models.get_or_compute(fp, build)
        if loaded.arm != arm or loaded.path != path:  # same weights reached under another name
            loaded = replace(loaded, arm=arm, path=path)
        return loaded

    def loaded_if_cached(self, arm: Arm) -> Loaded | None:
        """The loaded arm when it is in memory, else None (never loads)."""
        return self._models.get(self.fingerprint(arm.checkpoint))
