"""Models fine-tuned from the user's own pretraining runs, as Explore models (issue 11).

A *transfer model* is a pair of fine-tuning runs on a target task that start from one cached pretraining run
(:func:`craftlab.train.pretrain.get_transfer`, folders ``$CRAFTLAB_HOME/pretrain/<key>/finetune/<run>``): the
plain run (AdamW alone) and its CrAFT twin (+ SAM). Its name in the app is ``pretrained:<pretrain key>/<run>``
(:func:`transfer_name`). The Train tab makes such pairs; the Explore tab resolves the name into those two arms
(:class:`craftlab_app.explore.transfers.TransferArmLoader`) — so the naming lives here, in ``common/``, which both
tabs import.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from craftlab.train.pretrain_runs import PretrainSpec, is_cached, transfer_dir
from craftlab.train.runs import RunSpec

__all__ = ["PREFIX", "Transfer", "describe_transfer", "from_record", "spec_of_pretrain", "transfer_name"]

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


def transfer_name(t: Transfer) -> str:
    """The Explore model name of the pair `t` belongs to: ``pretrained:<pretrain key>/<run folder>`` (the plain
    run's folder when it is the plain run; a SAM run without a plain twin is named by its own folder)."""
    return PREFIX + t.key


def from_record(record: dict[str, Any]) -> Transfer:
    return Transfer(spec_of_pretrain(record["pretrain"]), data=record["data"], epochs=int(record["epochs"]),
                    sam_rho=float(record["sam_rho"]), seed=int(record["seed"]), lr=record.get("lr"),
                    optimizer=record.get("optimizer", "adamw"))


def describe_transfer(t: Transfer) -> str:
    """``vit-tiny pretrained Adam+expand (2 epochs, seed 0) → digits · 3 epochs · seed 0``."""
    p = t.pretrain
    return (f"{p.model} pretrained {p.label} ({p.epochs} epoch{'s' if p.epochs != 1 else ''}, seed {p.seed}) → "
            f"{t.data} · {t.epochs} epoch{'s' if t.epochs != 1 else ''} · seed {t.seed}")
