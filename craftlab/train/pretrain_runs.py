"""What a pretraining run is (:class:`PretrainSpec`), where it is cached, and what is in the cache.

A pretraining run is keyed by every input that changes its result: model, data, optimizer, lr, epochs,
warm-up, SAM radius, transform (with its parameters) and seed. Defaults left at ``None`` are resolved to the
zoo's recipe first (:meth:`PretrainSpec.resolved`), so a spec and its resolved form share one folder,
``$CRAFTLAB_HOME/pretrain/<key>``. Fine-tuning runs made from a pretrained checkpoint
(:func:`craftlab.train.pretrain.get_transfer`) live below it, in ``finetune/<data>-<arm>-...``.

Training and the cached getters are in :mod:`craftlab.train.pretrain` (which imports this module).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import cache
from .._errors import unknown_name
from ..cache import num, slug
from ..checkpoint import read_meta, scan_checkpoints
from ..models import ZOO
from ..transforms import get_transform
from .finetune import OPTIMIZERS

OPTIMIZER_LABELS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
DEFAULT_EPOCHS = 10
NAMES_HINT = ("only zoo models are pretrained by name; for another architecture pass a model object "
              "(craftlab.build_model(name, num_classes=...)) and out=")


def _slug_eq(text: str) -> str:
    return slug(text, keep="._+=-")  # pretraining keys keep "=" (transform parameters)


def recipe(model: str, optimizer: str) -> dict[str, Any]:
    """The default lr, epochs and warm-up of a pretraining run: the zoo's recipe for zoo models (its lr for Adam and
    AdamW alike), else the optimizer's default lr and 10 epochs."""
    zoo = ZOO[model].pretrain if model in ZOO else {}
    lr = zoo["lr"] if "lr" in zoo and optimizer in ("adam", "adamw") else OPTIMIZERS[optimizer][1]
    warmup = float(zoo.get("warmup_epochs", 0.0))
    return {"lr": lr, "epochs": zoo.get("epochs", DEFAULT_EPOCHS), "warmup_epochs": warmup}


@dataclass(frozen=True)
class PretrainSpec:
    """A pretraining run on the source task: the knobs of the SNT comparison (optimizer, SAM, transform).

    ``None`` for lr / epochs / warmup_epochs means the recipe (:func:`recipe`). ``transform`` is a registered
    name or spec text (``"expand"``, ``"expand:rate=4"``), or None.

    Example::

        spec = PretrainSpec("resnet-tiny", optimizer="adam", transform="repvgg", seed=1)
        spec.key     # 'resnet-tiny-mnist5k-adam+repvgg-lr0.002-e6-s1'
    """

    model: str = "vit-tiny"
    data: str = "mnist5k"
    optimizer: str = "adam"
    lr: float | None = None
    epochs: int | None = None
    warmup_epochs: float | None = None
    sam_rho: float = 0.0
    transform: str | None = None
    seed: int = 0

    def resolved(self) -> PretrainSpec:
        """The same run with every default filled in and the transform in canonical form (validates the spec)."""
        if self.model not in ZOO:
            raise unknown_name("zoo model", self.model, sorted(ZOO), hint=NAMES_HINT)
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        ok = isinstance(self.sam_rho, numbers.Real) and math.isfinite(self.sam_rho) and self.sam_rho >= 0
        if not ok:
            raise ValueError(f"sam_rho must be a finite number >= 0, got {self.sam_rho!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        r = recipe(self.model, self.optimizer)
        return replace(self, lr=float(r["lr"] if self.lr is None else self.lr),
                       epochs=int(r["epochs"] if self.epochs is None else self.epochs),
                       warmup_epochs=float(r["warmup_epochs"] if self.warmup_epochs is None else self.warmup_epochs),
                       sam_rho=float(self.sam_rho), seed=int(self.seed),
                       transform=None if self.transform is None else get_transform(self.transform).spec)

    @property
    def arm(self) -> str:
        """Short machine label: ``adam``, ``adam+sam0.05``, ``adam+expand``, ``adam+expand+sam0.05``."""
        t = "" if self.transform is None else f"+{get_transform(self.transform).spec}"
        return f"{self.optimizer}{t}" + (f"+sam{num(self.sam_rho)}" if self.sam_rho else "")

    @property
    def label(self) -> str:
        """Human label: ``Adam``, ``Adam+SAM ρ=0.05``, ``Adam+expand``, ``Adam+expand+SAM ρ=0.05``."""
        t = "" if self.transform is None else f"+{get_transform(self.transform).spec}"
        sam = f"+SAM ρ={num(self.sam_rho)}" if self.sam_rho else ""
        return f"{OPTIMIZER_LABELS.get(self.optimizer, self.optimizer)}{t}{sam}"

    @property
    def key(self) -> str:
        """Folder name in the cache: different for any two specs that train differently."""
        r = self.resolved()
        warm = f"-w{num(r.warmup_epochs)}" if r.warmup_epochs else ""
        return f"{_slug_eq(r.model)}-{_slug_eq(r.data)}-{_slug_eq(r.arm)}-lr{num(r.lr)}-e{r.epochs}{warm}-s{r.seed}"


def pretrain_dir(spec: PretrainSpec) -> Path:
    """The cache folder of `spec` (it may not exist yet)."""
    return cache.home() / "pretrain" / spec.key


def transfer_dir(spec: PretrainSpec, data: str, optimizer: str, lr: float | None, epochs: int, sam_rho: float,
                 seed: int) -> Path:
    """The cache folder of a fine-tuning run that starts from `spec`'s checkpoint."""
    arm = optimizer + (f"+sam{num(sam_rho)}" if sam_rho else "") + ("" if lr is None else f"-lr{num(lr)}")
    return pretrain_dir(spec) / "finetune" / f"{_slug_eq(data)}-{arm}-e{epochs}-s{seed}"


def is_cached(path: Path, field: str, record: dict[str, Any]) -> bool:
    """True when `path` holds a checkpoint whose sidecar's `field` equals `record`."""
    try:
        return read_meta(path).get(field) == record
    except ValueError:
        return False


def list_pretrains() -> list[dict[str, Any]]:
    """Every cached pretraining run: ``{"path", "key", "spec", "label", "test_accuracy", "time_per_step_s"}``."""
    out = []
    for path, meta in scan_checkpoints(cache.home() / "pretrain"):
        metrics = meta.get("metrics", {})
        out.append({"path": str(path), "key": path.name, "spec": meta.get("pretrain"),
                    "label": meta.get("label"), "test_accuracy": metrics.get("test_accuracy"),
                    "time_per_step_s": metrics.get("time_per_step_s")})
    return out


def list_transfers() -> list[tuple[Path, dict[str, Any]]]:
    """Every cached fine-tuning run that starts from a cached pretraining run: ``(folder, sidecar)`` pairs (the
    folders :func:`transfer_dir` names; unreadable sidecars are skipped).

    Example::

        >>> all(path.parent.name == "finetune" for path, _ in list_transfers())
        True
    """
    return [(sub, meta) for path, _ in scan_checkpoints(cache.home() / "pretrain")
            for sub, meta in scan_checkpoints(path / "finetune")]


def find_transfer(pretrain_key: str, run: str) -> Path:
    """The folder of the fine-tuning run `run` from the pretraining run `pretrain_key` (ValueError naming the
    problem for a malformed name; the folder may not exist).

    Example::

        >>> find_transfer("resnet-tiny-mnist5k-adam-lr0.002-e6-s0", "digits-adamw-e8-s0").name
        'digits-adamw-e8-s0'
    """
    for part in (pretrain_key, run):
        if not part or "/" in part or part in (".", "..") or ".." in part:
            raise ValueError(f"a transfer run is named <pretrain key>/<run>, got {pretrain_key!r}/{run!r}")
    return cache.home() / "pretrain" / pretrain_key / "finetune" / run


def spec_record(spec: PretrainSpec) -> dict[str, Any]:
    """What a pretraining checkpoint's sidecar records under ``"pretrain"``: the resolved spec and every parameter
    of its transform (defaults included, so that a changed default does not pass for a cached run)."""
    r = spec.resolved()
    params = None if r.transform is None else get_transform(r.transform).params
    return {**asdict(r), "transform_params": params}
