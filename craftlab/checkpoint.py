"""Checkpoints: a folder with ``model.safetensors`` and a ``craftlab.json`` sidecar.

The sidecar records the architecture (a zoo or timm name), the classes, the data, the optimizer, ρ,
the seed and metrics. Writes are atomic (temp file + rename; the JSON is written last, so a folder
with a sidecar always has matching weights). Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
SIDECAR = "craftlab.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or for another architecture."""


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Save `model` to `directory` (created) as safetensors + JSON; returns the folder.

    `meta` is merged into the sidecar (``data``, ``optimizer``, ``sam_rho``, ``seed``, ``metrics``...).
    The architecture comes from ``model.craftlab_name`` (set by :func:`craftlab.create_model`).
    """
    name = getattr(model, "craftlab_name", None)
    if name is None:
        raise ValueError("model has no craftlab_name: build it with craftlab.create_model to checkpoint it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied weights)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    from .models import head_and_stem

    head = head_and_stem(model)[1]
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and head is not None:
        num_classes = getattr(model.get_submodule(head), "out_features", None)
    sidecar = {
        "format": "craftlab-checkpoint", "format_version": FORMAT_VERSION,
        "architecture": name, "num_classes": num_classes,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        **(meta or {}),
    }
    from . import __version__

    sidecar.setdefault("craftlab_version", __version__)
    _atomic_write(directory / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"architecture": name}))
    _atomic_write(directory / SIDECAR, lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2, default=str)))
    return directory


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a checkpoint folder (raises CheckpointError when missing or damaged)."""
    path = Path(directory) / SIDECAR
    if not path.exists():
        raise CheckpointError(f"{str(directory)!r} is not a craftlab checkpoint (no {SIDECAR})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint sidecar {str(path)!r} is damaged: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != "craftlab-checkpoint" or "architecture" not in meta:
        raise CheckpointError(f"{str(path)!r} is not a craftlab checkpoint sidecar")
    return meta


def load_checkpoint(
    directory: str | os.PathLike,
    expected_architecture: str | None = None,
    model: nn.Module | None = None,
) -> nn.Module:
    """Load a checkpoint folder into a fresh model (or into `model`, which must match).

    Raises CheckpointError naming the problem for a missing/damaged file or an architecture that
    differs from `expected_architecture` (or from `model`'s).
    """
    meta = read_meta(directory)
    arch = meta["architecture"]
    want = expected_architecture or (getattr(model, "craftlab_name", None) if model is not None else None)
    if want is not None and want != arch:
        raise CheckpointError(f"checkpoint {str(directory)!r} holds a {arch!r} model, not {want!r}")
    wpath = Path(directory) / WEIGHTS
    try:
        state = load_file(str(wpath))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {WEIGHTS}") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint weights {str(wpath)!r} are damaged: {err}") from err
    if model is None:
        from .models import build_model

        model = build_model(arch, num_classes=meta.get("num_classes"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        raise CheckpointError(
            f"checkpoint {str(directory)!r} does not fit a {arch!r} model with {meta.get('num_classes')} classes: "
            + " ".join(first)
        ) from err
    model.craftlab_meta = meta  # type: ignore[attr-defined]
    return model.eval()
