"""Is the Hugging Face Hub reachable? Asked before fine-tuning a timm model whose pretrained weights come
from it, so that an offline machine gets one clear error in seconds instead of minutes of hub retries."""

from __future__ import annotations

import os
import socket

__all__ = ["check_hub"]

HUB = ("huggingface.co", 443)


def check_hub(model: str, timeout: float = 3.0) -> None:
    """Raise RuntimeError naming the problem when `model` needs the Hub and it is unreachable.

    Zoo models (shipped, offline) and ``HF_HUB_OFFLINE=1`` (weights already in the Hugging Face cache)
    skip the check.
    """
    from craftlab.models import zoo_names

    if model in zoo_names() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    try:
        socket.create_connection(HUB, timeout=timeout).close()
    except OSError as err:
        raise RuntimeError(
            f"timm model {model!r} needs its pretrained weights from the Hugging Face Hub, which is unreachable "
            f"({err}); the zoo models ({', '.join(zoo_names())}) work offline, and HF_HUB_OFFLINE=1 uses weights "
            "already in the Hugging Face cache") from None
