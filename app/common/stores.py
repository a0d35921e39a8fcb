"""The app's on-disk caches under ``$CRAFTLAB_HOME/explore``: small JSON files, written atomically.

* :class:`PointStore` — per (checkpoint content, data context): every measured point (accuracy, loss,
  size of one arm under one setting) and the arm's sharpness numbers, in
  ``points-<fingerprint>-<context>.json``; loaded once per process, rewritten when marked dirty.
* :class:`LandscapeStore` — one ``landscape-*.json`` per (arm, setting, resolution), the oldest dropped
  beyond ``max_files``.

Files carry :data:`EVAL_VERSION`; a file of another version (or a damaged one) reads as missing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from craftlab import cache
from craftlab.cache import atomic_write_json

__all__ = ["EVAL_VERSION", "MAX_STORED_LANDSCAPES", "LandscapeStore", "PointStore", "atomic_write_json"]

EVAL_VERSION = 2  # 2: BN re-estimation after quantization too (issue 19)
"""Bump when the way points are measured changes (invalidates the on-disk caches)."""
MAX_STORED_LANDSCAPES = 256
"""Landscapes kept on disk (oldest dropped first); each is a few tens of KB."""

Prefix = tuple[str, str]
"""(checkpoint fingerprint, data-context key): what every stored number of an arm is keyed by."""


def _folder() -> Path:
    return cache.subdir("explore")


class PointStore:
    """Points and sharpness of each arm on disk; ``enabled=False`` makes every call a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._loaded: set[Prefix] = set()
        self._dirty: set[Prefix] = set()

    @staticmethod
    def path(prefix: Prefix) -> Path:
        return _folder() / f"points-{prefix[0][:20]}-{prefix[1]}.json"

    def load_once(self, prefix: Prefix) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        """({setting key: point}, sharpness or None) stored for `prefix`; empty after the first call."""
        with self._lock:
            if not self.enabled or prefix in self._loaded:
                return {}, None
            self._loaded.add(prefix)
        try:
            stored = json.loads(self.path(prefix).read_text())
        except (OSError, ValueError):
            return {}, None
        if not isinstance(stored, dict) or stored.get("version") != EVAL_VERSION:
            return {}, None
        points = {k: v for k, v in (stored.get("points") or {}).items() if isinstance(v, dict) and "accuracy" in v}
        sharp = stored.get("sharpness")
        return points, (sharp if isinstance(sharp, dict) and "lambda_max" in sharp else None)

    def mark_dirty(self, prefix: Prefix) -> None:
        if self.enabled:
            with self._lock:
                self._dirty.add(prefix)

    def take_dirty(self) -> set[Prefix]:
        """The prefixes marked since the last call (the caller writes them)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def write(self, prefix: Prefix, points: dict[str, Any], sharpness: dict[str, Any] | None) -> None:
        obj: dict[str, Any] = {"version": EVAL_VERSION, "points": points}
        if sharpness is not None:
            obj["sharpness"] = sharpness
        try:
            atomic_write_json(self.path(prefix), obj)
        except OSError:
            pass


class LandscapeStore:
    """Landscapes on disk, bounded to `max_files`; ``enabled=False`` makes every call a no-op."""

    def __init__(self, enabled: bool = True, max_files: int = MAX_STORED_LANDSCAPES) -> None:
        self.enabled, self.max_files = enabled, max_files

    @staticmethod
    def path(prefix: Prefix, setting_key: str, resolution: Sequence[Any], probe_size: int) -> Path:
        h = cache.fingerprint([setting_key, list(resolution), probe_size])[:16]
        return _folder() / f"landscape-{prefix[0][:20]}-{prefix[1]}-{h}.json"

    def read(self, path: Path) -> dict[str, Any] | None:
        """``{"path": PathResult | LineResult, "plane": PlaneResult, "seconds"}``, or None."""
        from craftlab.probes.landscape import LineResult, PathResult, PlaneResult

        if not self.enabled:
            return None
        try:
            d = json.loads(path.read_text())
            if d.get("version") != EVAL_VERSION:
                return None
            path_cls = PathResult if d["path"].get("kind") == "compression_path" else LineResult
            return {"path": path_cls.from_dict(d["path"]), "plane": PlaneResult.from_dict(d["plane"]),
                    "seconds": float(d["seconds"])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def write(self, path: Path, out: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            atomic_write_json(path, {"version": EVAL_VERSION, "path": out["path"].to_dict(),
                                     "plane": out["plane"].to_dict(), "seconds": out["seconds"]})
            files = sorted(_folder().glob("landscape-*.json"), key=lambda f: f.stat().st_mtime)
            for f in files[:-self.max_files]:  # keep the disk cache bounded too
                f.unlink(missing_ok=True)
        except OSError:
            pass
