"""Models fine-tuned from the user's own pretraining runs, as Explore models (issue 11).

A *transfer model* is a pair of fine-tuning runs on a target task that start from one cached pretraining run
(:func:`craftlab.train.pretrain.get_transfer`, folders ``$CRAFTLAB_HOME/pretrain/<key>/finetune/<run>``): the
plain run (AdamW alone) and its CrAFT twin (+ SAM). Its name in the app is ``pretrained:<pretrain key>/<run>``
(:func:`transfer_name`), which :class:`TransferArmLoader` resolves into those two arms — an arm whose run is not
fine-tuned yet is left out (the cards then say the model has one arm).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from craftlab import cache
from craftlab.checkpoint import read_meta, scan_checkpoints
from craftlab.train.pretrain_runs import PretrainSpec, is_cached, transfer_dir
from craftlab.train.runs import RunSpec, arm_label

from .arms import Arm, ArmLoader, role_of

__all__ = ["PREFIX", "Transfer", "TransferArmLoader", "spec_of_pretrain", "transfer_name"]

PREFIX = "pretrained:"
"""What a transfer model's name starts with."""


def spec_of_pretrain(record: dict[str, Any]) -> PretrainSpec:
    """The :class:`PretrainSpec` of a sidecar's ``"pretrain"`` record (ValueError when it is not one)."""
    if not isinstance(record, dict):
        raise ValueError(f"not a pretraining record: {record!r}")
    names = {f.name for f in fields(PretrainSpec)}
    try:
        return PretrainSpec(**{k: v for k, v in record.items() if k in names}).resolved()
    except TypeError as err:
        raise ValueError(f"not a pretraining record: {err}") from None


@dataclass(frozen=True)
class Transfer:
    """One fine-tuning run from a pretraining run: what :func:`craftlab.train.pretrain.get_transfer` takes."""

    pretrain: PretrainSpec
    data: str = "digits"
    epochs: int = 3
    sam_rho: float = 0.0
    seed: int = 0
    lr: float | None = None
    optimizer: str = "adamw"

    @property
    def path(self) -> Path:
        return transfer_dir(self.pretrain, self.data, self.optimizer, self.lr, self.epochs, self.sam_rho, self.seed)

    @property
    def record(self) -> dict[str, Any]:
        """The sidecar's ``"transfer"`` record of this run (as ``get_transfer`` writes it)."""
        from craftlab.train.pretrain_runs import spec_record

        return {"data": self.data, "optimizer": self.optimizer, "lr": self.lr, "epochs": self.epochs,
                "sam_rho": self.sam_rho, "seed": self.seed, "pretrain": spec_record(self.pretrain)}

    @property
    def key(self) -> str:
        return f"{self.pretrain.key}/{self.path.name}"

    @property
    def run_spec(self) -> RunSpec:
        """The fine-tuning recipe as a :class:`RunSpec` (for the arm's role, name and label; its checkpoint is
        :attr:`path`, not ``run_dir``)."""
        return RunSpec(model=self.pretrain.model, data=self.data, optimizer=self.optimizer, lr=self.lr,
                       epochs=self.epochs, sam_rho=self.sam_rho, seed=self.seed)

    def is_cached(self) -> bool:
        return is_cached(self.path, "transfer", self.record)

    def twin(self, sam_rho: float) -> Transfer:
        from dataclasses import replace

        return replace(self, sam_rho=0.0 if self.sam_rho else float(sam_rho))

    def arm(self) -> Arm:
        spec = self.run_spec
        return Arm(role_of(spec), spec.arm, arm_label(spec), spec, str(self.path))


def transfer_name(t: Transfer) -> str:
    """The Explore model name of the pair `t` belongs to: ``pretrained:<pretrain key>/<run folder>`` (the plain
    run's folder when it is the plain run; a SAM run without a plain twin is named by its own folder)."""
    return PREFIX + t.key


def _from_record(record: dict[str, Any]) -> Transfer:
    return Transfer(spec_of_pretrain(record["pretrain"]), data=record["data"], epochs=int(record["epochs"]),
                    sam_rho=float(record["sam_rho"]), seed=int(record["seed"]), lr=record.get("lr"),
                    optimizer=record.get("optimizer", "adamw"))


def describe_transfer(t: Transfer) -> str:
    """``vit-tiny pretrained Adam+expand (2 epochs, seed 0) → digits · 3 epochs · seed 0``."""
    p = t.pretrain
    return (f"{p.model} pretrained {p.label} ({p.epochs} epoch{'s' if p.epochs != 1 else ''}, seed {p.seed}) → "
            f"{t.data} · {t.epochs} epoch{'s' if t.epochs != 1 else ''} · seed {t.seed}")


class TransferArmLoader(ArmLoader):
    """:class:`~craftlab_app.arms.ArmLoader` that also knows the transfer models (``pretrained:...``)."""

    def transfers(self) -> list[tuple[str, Transfer]]:
        """(name, plain-or-only run) of every cached transfer pair, one entry per pair."""
        pairs: dict[str, Transfer] = {}
        for path, _ in scan_checkpoints(cache.home() / "pretrain"):
            for _, sub in scan_checkpoints(path / "finetune"):
                try:
                    t = _from_record(sub["transfer"])
                except (KeyError, TypeError, ValueError):
                    continue
                pair = (t.twin(0.0) if t.sam_rho else t).key
                if pair not in pairs or not t.sam_rho:  # named by the plain run when there is one
                    pairs[pair] = t
        return sorted(((transfer_name(t), t) for t in pairs.values()), key=lambda x: x[0])

    def model_choices(self) -> list[tuple[str, str]]:
        base = super().model_choices()
        return base + [(self.describe(name) + " (AdamW vs CrAFT)", name) for name, _ in self.transfers()]

    def _transfer(self, name: str) -> Transfer:
        rel = name[len(PREFIX):]
        pkey, _, run = rel.partition("/")
        if not pkey or not run or "/" in run or ".." in rel:
            raise ValueError(f"model {name!r}: a transfer model is named pretrained:<pretrain key>/<run>")
        path = cache.home() / "pretrain" / pkey / "finetune" / run
        try:
            return _from_record(read_meta(path)["transfer"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"model {name!r}: {path} is not a fine-tuning run from a pretraining run "
                             f"({err})") from None

    def resolve(self, model: str, seed: int | None = None) -> list[Arm]:
        """A transfer model's fine-tuned arms (plain first; only its own seed), else as :class:`ArmLoader`."""
        if isinstance(model, str) and model.strip().startswith(PREFIX):
            t = self._transfer(model.strip())
            if seed is not None and seed != t.seed:
                return []
            runs = sorted([t, t.twin(self.sam_rho)], key=lambda x: x.sam_rho > 0)
            return [r.arm() for r in runs if r.is_cached()]
        return super().resolve(model, seed)

    def describe(self, model: str) -> str:
        if isinstance(model, str) and model.strip().startswith(PREFIX):
            try:
                return describe_transfer(self._transfer(model.strip()))
            except (ValueError, OSError):
                return model.strip()
        return super().describe(model)
