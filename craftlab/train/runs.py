"""Cached fine-tuning runs: the same settings give the same checkpoint, built once.

A run is keyed by every input that changes its result (model, data, optimizer, lr, epochs, ρ,
ASAM, seed, and a batch size other than the data's default); its checkpoint lives in
``$CRAFTLAB_HOME/runs/<key>``. The CrAFT demo, the app and the notebooks share these, so a model fine-tuned
once is reused everywhere.

This module is the one place where an arm is named (:attr:`RunSpec.arm` for keys and tables,
:func:`arm_label` / :attr:`RunSpec.label` for people) and where a run's twin (the same run with / without
SAM) is made (:meth:`RunSpec.twin`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import cache
from ..cache import num, slug
from ..checkpoint import SIDECAR, read_meta, scan_checkpoints

OPTIMIZER_LABELS = {"adamw": "AdamW", "sgd": "SGD"}
"""How people read the optimizer names (``finetune(optimizer=...)``)."""


@dataclass(frozen=True)
class RunSpec:
    """What a fine-tuning run is: the CrAFT recipe's knobs.

    Example::

        >>> spec = RunSpec(model="vit-tiny", data="digits", epochs=8, sam_rho=0.05, seed=3)
        >>> spec.key, spec.arm
        ('vit-tiny-digits-adamw+sam0.05-e8-s3', 'adamw+sam0.05')
    """

    model: str = "vit-tiny"
    data: str = "digits"
    optimizer: str = "adamw"
    lr: float | None = None
    epochs: int = 8
    sam_rho: float = 0.0
    adaptive: bool = False
    seed: int = 0
    batch_size: int | None = None
    """Training batch size; None: the data's default (64). Only a non-default one appears in :attr:`key` and
    :meth:`record`, so runs made before this field existed keep their keys and stay cached."""
    sam_mode: str = "sam"
    """How SAM spends its second pass (``finetune(sam_mode=...)``): ``"sam"``, ``"looksam:K"``, ``"random:F"``,
    ``"msam"``, ``"rwp"``. Like `batch_size`, only a non-default mode appears in :attr:`key` and :meth:`record`."""
    amp: str | None = None
    """Mixed precision of the forward passes: None (float32, default), ``"bf16"`` or ``"fp16"`` (CUDA only), as
    :func:`craftlab.finetune`'s ``amp``. Like ``batch_size``, only a non-default value enters :attr:`key` and
    :meth:`record` (old runs stay cached)."""

    def __post_init__(self) -> None:
        """The one check of a run: every field in its range (a RunSpec is trusted after this)."""
        import math
        import numbers

        from .._errors import unknown_name
        from .finetune import OPTIMIZERS

        def whole(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {v!r}")

        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a model name, got {self.model!r}")
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"data must be a dataset name, got {self.data!r}")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        whole("epochs", 1)
        whole("seed", 0)
        if self.batch_size is not None:
            whole("batch_size", 1)
        if not (isinstance(self.sam_rho, numbers.Real) and math.isfinite(self.sam_rho) and self.sam_rho >= 0):
            raise ValueError(f"sam_rho must be a finite number >= 0, got {self.sam_rho!r}")
        if self.adaptive and self.sam_rho == 0:
            raise ValueError("ASAM (adaptive=True) needs sam_rho > 0")
        if self.lr is not None and not (isinstance(self.lr, numbers.Real) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number (or None for the optimizer's default), got {self.lr!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")
        if self.sam_mode != "sam":
            from .sam import parse_sam_mode  # checked (and spelled canonically) at the boundary

            mode = parse_sam_mode(self.sam_mode)
            if not self.sam_rho > 0:
                raise ValueError(f"sam_mode={self.sam_mode!r} needs sam_rho > 0")
            object.__setattr__(self, "sam_mode", mode.spec())

    def record(self) -> dict[str, Any]:
        """What a checkpoint's sidecar records under ``"run"``: the fields, without ``batch_size`` / ``amp`` when
        they are the default (None), as runs recorded before those fields existed."""
        out = asdict(self)
        for name in ("batch_size", "amp"):
            if out[name] is None:
                del out[name]
        if self.sam_mode == "sam":
            del out["sam_mode"]
        return out

    @property
    def arm(self) -> str:
        """Short machine label: ``adamw``, ``adamw+sam0.05``, ``adamw+asam0.5``, with an efficient mode
        ``adamw+sam0.05-looksam5``, ``adamw+sam0.05-random0.5``, ``adamw+sam0.05-msam`` (part of :attr:`key`)."""
        if self.sam_rho == 0:
            return self.optimizer
        mode = "" if self.sam_mode == "sam" else "-" + self.sam_mode.replace(":", "")
        return f"{self.optimizer}+{'asam' if self.adaptive else 'sam'}{num(self.sam_rho)}{mode}"

    @property
    def label(self) -> str:
        """Human label of the arm: ``AdamW``, ``SAM ρ=0.05``, ``ASAM ρ=0.5``, ``SGD+SAM ρ=0.05``."""
        return arm_label(self)

    @property
    def key(self) -> str:
        """Folder name of the run in the cache: different for any two specs that train differently."""
        lr = "" if self.lr is None else f"-lr{num(self.lr)}"
        bs = "" if self.batch_size is None else f"-b{self.batch_size}"
        amp = "" if self.amp is None else f"-{self.amp}"
        return f"{slug(self.model)}-{slug(self.data)}-{self.arm}{lr}{bs}{amp}-e{self.epochs}-s{self.seed}"

    def twin(self, sam_rho: float = 0.05, adaptive: bool = False) -> RunSpec:
        """The other arm of a CrAFT comparison, everything else the same: a plain run's twin trains with
        SAM of radius `sam_rho` (ASAM with `adaptive`); a SAM run's twin is its plain run (the arguments
        are then not used)."""
        if self.sam_rho > 0:
            return replace(self, sam_rho=0.0, adaptive=False, sam_mode="sam")
        if not sam_rho > 0:
            raise ValueError(f"the SAM twin of a plain run needs sam_rho > 0, got {sam_rho!r}")
        return replace(self, sam_rho=float(sam_rho), adaptive=bool(adaptive))


def arm_label(spec: RunSpec) -> str:
    """Human label of `spec`'s arm: ``AdamW``, ``SAM ρ=0.05``, ``ASAM ρ=0.5`` (AdamW is implied),
    ``SGD``, ``SGD+SAM ρ=0.05``, ``SAM ρ=0.05 looksam:5``, ``MSAM ρ=0.3``, ``RWP σ=0.01``. For settings without
    a spec: ``arm_label(RunSpec(sam_rho=0.05))``."""
    base = OPTIMIZER_LABELS.get(spec.optimizer, spec.optimizer)
    if not spec.sam_rho:
        return base
    sam = "ASAM" if spec.adaptive else "SAM"
    mode = getattr(spec, "sam_mode", "sam")
    if mode == "msam":
        name = f"M{sam} ρ={num(spec.sam_rho)}"
    elif mode == "rwp":
        name = f"RWP σ={num(spec.sam_rho)}"
    else:
        name = f"{sam} ρ={num(spec.sam_rho)}" + ("" if mode == "sam" else f" {mode}")
    return name if spec.optimizer == "adamw" else f"{base}+{name}"


def run_dir(spec: RunSpec) -> Path:
    return cache.home() / "runs" / spec.key


def is_cached(spec: RunSpec) -> bool:
    """True when `spec`'s checkpoint exists and holds that run (what :func:`get_run` would reuse)."""
    try:
        run = read_meta(run_dir(spec)).get("run")
    except ValueError:
        return False
    return run is None or run == spec.record()  # None: a run saved before specs were recorded


def get_run(spec: RunSpec, progress: bool = True, callback: Any = None) -> Path:
    """The checkpoint folder of `spec`, fine-tuning it first if it is not cached (or if the cached
    folder holds another spec's run).

    Example::

        path = craftlab.get_run(craftlab.RunSpec(model="vit-tiny", sam_rho=0.05))   # fine-tunes once, then cached
        model = craftlab.load_checkpoint(path)
    """
    path = run_dir(spec)
    if is_cached(spec):
        return path
    from ..data import load_data
    from ..evaluation import evaluate
    from ..models import build_model
    from .finetune import eval_loader, finetune
    from .pretrain import create_model

    data = load_data(spec.data, model=build_model(spec.model))  # input config only
    model = create_model(spec.model, num_classes=data.num_classes, pretrained=True, seed=spec.seed)
    result = finetune(model, data, optimizer=spec.optimizer, lr=spec.lr, epochs=spec.epochs, sam_rho=spec.sam_rho,
                      adaptive=spec.adaptive, seed=spec.seed, batch_size=spec.batch_size, amp=spec.amp,
                      progress=progress, callback=callback, sam_mode=spec.sam_mode)
    test = evaluate(result.model, eval_loader(data, "test"))
    result.metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    result.config.update(run=spec.record(), arm=spec.arm, label=spec.label, classes=data.classes)
    return result.save(path)


def list_runs() -> list[dict[str, Any]]:
    """Every cached run: ``{"path", "key", "architecture", "arm", "test_accuracy", ...}``.

    Example::

        [(r["key"], r["test_accuracy"]) for r in craftlab.list_runs()]
    """
    out = []
    for path, meta in scan_checkpoints(cache.home() / "runs"):
        out.append({"path": str(path), "key": path.name, "architecture": meta["architecture"],
                    "arm": meta.get("arm"), "run": meta.get("run"),
                    "test_accuracy": meta.get("metrics", {}).get("test_accuracy")})
    return out


def find_run(key: str) -> Path | None:
    """The folder of the cached run named `key` (a folder of ``$CRAFTLAB_HOME/runs`` with a sidecar, readable or
    not: :func:`~craftlab.checkpoint.read_meta` then names a damaged one), else None. Cheap: no sidecar is read.

    Example::

        >>> find_run("no-such-run") is None
        True
    """
    key = str(key).strip()
    if not key or "/" in key or key in (".", ".."):
        return None
    path = cache.home() / "runs" / key
    return path if (path / SIDECAR).is_file() else None


def unknown_model(name: str) -> ValueError:
    """The error for a model that is neither a zoo name, nor a cached run (:func:`list_runs`), nor a timm name:
    it suggests the closest zoo names and run keys (else timm names).

    Example::

        >>> "did you mean 'vit-tiny'" in str(unknown_model("vit-tiyn"))
        True
    """
    import difflib

    from .._errors import unknown_name
    from ..models import _timm_names, zoo_names

    choices = [*zoo_names(), *sorted(r["key"] for r in list_runs())]
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(name, _timm_names(), n=3, cutoff=0.6)
    return unknown_name("model", name, choices, suggestions=close,
                        hint="use a zoo model (" + ", ".join(zoo_names()) + "), the key of a cached run, "
                             "or a timm model name")
