"""The baselines side-tuning is compared with, on the same data and budget: a linear probe on the frozen
backbone's pre-logits feature, LoRA inside the backbone (Hugging Face ``peft``), full fine-tuning (with or
without SAM, :func:`craftlab.finetune`). LoRA and full fine-tuning back-propagate through the backbone.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from torch import nn

from ..models import SeededRNG

LORA_TARGETS = ("qkv",)
"""Default LoRA targets in a timm ViT: the attention's fused q/k/v projection of every block (LoRA's choice)."""


def _classifier_name(model: nn.Module) -> str:
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    for name, m in model.named_modules():
        if m is clf and name:
            return name
    raise ValueError(f"{type(model).__name__} has no classifier head (get_classifier) for LoRA to train beside it")


def lora_model(model: nn.Module, rank: int = 4, alpha: float | None = None, targets: Sequence[str] = LORA_TARGETS,
               seed: int = 0) -> nn.Module:
    """A copy of `model` with LoRA adapters (peft) on every module named in `targets` and a trainable head.

    Everything else is frozen. LoRA's A matrices are drawn from a private stream seeded by `seed`; B starts at 0,
    so the copy computes what `model` does until it trains. ``alpha`` defaults to `rank` (scaling 1).

    >>> lm = lora_model(craftlab.create_model("vit-tiny", num_classes=10), rank=4)  # doctest: +SKIP
    >>> lm.print_trainable_parameters()                                             # doctest: +SKIP
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise RuntimeError("LoRA needs the Hugging Face peft package: pip install 'peft>=0.13'") from err
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    base = copy.deepcopy(model)
    names = [n for n, m in base.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in set(targets)]
    if not names:
        raise ValueError(f"no Linear module named {list(targets)} in {type(model).__name__} for LoRA")
    head = _classifier_name(base)
    # a full-match regex on exact module names: peft's plain-list matching would also catch suffixes
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=0.0, bias="none",
                        target_modules="|".join(re.escape(n) for n in names), modules_to_save=[head])
    with SeededRNG(seed):
        peft_model = get_peft_model(base, config)
    if hasattr(model, "craftlab_name"):
        peft_model.craftlab_name = model.craftlab_name  # type: ignore[attr-defined]
    return peft_model.eval()


def finetune_lora(model: nn.Module, data, rank: int = 4, alpha: float | None = None,
                  targets: Sequence[str] = LORA_TARGETS, **finetune_kwargs):
    """LoRA fine-tuning: :func:`lora_model` trained by :func:`craftlab.finetune` (same schedule, data order,
    seed handling as full fine-tuning). Returns its :class:`~craftlab.train.finetune.FinetuneResult`."""
    from ..train.finetune import finetune

    return finetune(lora_model(model, rank, alpha, targets, seed=finetune_kwargs.get("seed", 0)), data,
                    **finetune_kwargs)


def finetune_full(model: nn.Module, data, sam_rho: float = 0.0, **finetune_kwargs):
    """Full fine-tuning of every parameter: :func:`craftlab.finetune` (``sam_rho > 0``: with SAM, CrAFT)."""
    from ..train.finetune import finetune

    return finetune(model, data, sam_rho=sam_rho, **finetune_kwargs)
