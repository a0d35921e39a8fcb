"""Transfer models (``pretrained:<pretrain key>/<run>``, :mod:`craftlab_app.common.transfers`) as Explore
models: :class:`TransferArmLoader` resolves such a name into its two arms — an arm whose run is not fine-tuned yet
is left out (the cards then say the model has one arm)."""

from __future__ import annotations

from craftlab.checkpoint import read_meta
from craftlab.train.pretrain_runs import find_transfer, list_transfers
from craftlab.train.runs import arm_label

from ..common.jobs import role_of
from ..common.transfers import PREFIX, Transfer, describe_transfer, from_record, transfer_name
from .arms import Arm, ArmLoader

__all__ = ["TransferArmLoader", "transfer_arm"]


def transfer_arm(t: Transfer) -> Arm:
    """The Explore arm of the transfer run `t` (its checkpoint is ``t.path``)."""
    spec = t.run_spec
    return Arm(role_of(spec), spec.arm, arm_label(spec), spec, str(t.path))


class TransferArmLoader(ArmLoader):
    """:class:`~craftlab_app.explore.arms.ArmLoader` that also knows the transfer models (``pretrained:...``)."""

    def transfers(self) -> list[tuple[str, Transfer]]:
        """(name, plain-or-only run) of every cached transfer pair, one entry per pair."""
        pairs: dict[str, Transfer] = {}
        for _, sub in list_transfers():
            try:
                t = from_record(sub["transfer"])
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
        try:
            path = find_transfer(pkey, run)
        except ValueError:
            raise ValueError(f"model {name!r}: a transfer model is named pretrained:<pretrain key>/<run>") from None
        try:
            return from_record(read_meta(path)["transfer"])
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
            return [transfer_arm(r) for r in runs if r.is_cached()]
        return super().resolve(model, seed)

    def describe(self, model: str) -> str:
        if isinstance(model, str) and model.strip().startswith(PREFIX):
            try:
                return describe_transfer(self._transfer(model.strip()))
            except (ValueError, OSError):
                return model.strip()
        return super().describe(model)
