"""Where craftlab keeps what it builds: ``$CRAFTLAB_HOME`` or ``~/.cache/craftlab``."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The craftlab cache root (created on demand)."""
    root = Path(os.environ.get("CRAFTLAB_HOME") or Path.home() / ".cache" / "craftlab").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    """A sub-folder of the cache root, e.g. ``zoo``, ``data``, ``runs``."""
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
