"""Is the Hugging Face Hub reachable? The core's one check (:func:`craftlab.models.check_hub`), re-exported:
asked before fine-tuning a timm model whose pretrained weights come from the Hub, so that an offline
machine gets one clear error in seconds instead of minutes of hub retries."""

from __future__ import annotations

from craftlab.models import check_hub

__all__ = ["check_hub"]
