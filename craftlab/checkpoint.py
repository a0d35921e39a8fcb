"""Checkpoints: a folder with ``model.safetensors`` and a ``craftlab.json`` sidecar.

The sidecar records the architecture (a zoo or timm name), the classes, the data, the optimizer, ρ,
the seed, metrics and the SHA-256 of the weights file (``weights_sha256``). Each file is written atomically
(:func:`craftlab.cache.atomic_write`: the weights first, the sidecar last), and
loading checks the weights against the sidecar's hash: a save killed between the two renames (new weights
under the old sidecar: another run's metadata and metrics) is refused, never loaded as a mix. Sidecars
without the hash (older checkpoints) still load. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch import nn

from .cache import atomic_write, file_sha256, fingerprint

WEIGHTS = "model.safetensors"
SIDECAR = "craftlab.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or for another architecture.

    Example::

        try:
            model = craftlab.load_checkpoint("runs/vit-sam")
        except craftlab.CheckpointError as err:
            print(err)   # names the folder and what is wrong with it
    """


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Save `model` to `directory` (created) as safetensors + JSON; returns the folder.

    `meta` is merged into the sidecar (``data``, ``optimizer``, ``sam_rho``, ``seed``, ``metrics``...).
    The architecture comes from ``model.craftlab_name`` (set by :func:`craftlab.create_model`).

    Example::

        model = craftlab.create_model("vit-tiny", num_classes=10)
        craftlab.save_checkpoint(model, "runs/mine", {"data": {"name": "digits"}})
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
    return write_weights_and_sidecar(directory, state, sidecar, {"architecture": name})


def write_weights_and_sidecar(directory: str | os.PathLike, state: dict[str, Any], sidecar: dict[str, Any],
                              metadata: dict[str, str], weights: str = WEIGHTS) -> Path:
    """THE format of every saved network (checkpoints, supernets): `state` as safetensors (with `metadata`) and
    `sidecar` as JSON with the weights' SHA-256 (``weights_sha256``), each written atomically, the weights first,
    so a sidecar never names missing weights. Returns the folder.

    Example::

        write_weights_and_sidecar("out", {"w": torch.zeros(2)}, {"format": "mine"}, {"format": "mine"})
    """
    directory = Path(directory)

    def write(tmp: str) -> None:
        save_file(state, tmp, metadata=metadata)
        sidecar["weights_sha256"] = file_sha256(tmp)

    atomic_write(directory / weights, write)
    atomic_write(directory / SIDECAR, json.dumps(sidecar, indent=2, default=str))
    return directory


def read_verified_weights(directory: str | os.PathLike, meta: dict[str, Any], weights: str = WEIGHTS,
                          what: str = "checkpoint") -> dict[str, Any]:
    """The tensors of `directory`'s weights file, checked against the sidecar's ``weights_sha256`` (older sidecars
    without it still load); CheckpointError names a missing, unreadable, replaced or damaged file.

    Example::

        state = read_verified_weights("runs/mine", read_meta("runs/mine"))
    """
    wpath = Path(directory) / weights
    try:
        blob = wpath.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} {str(directory)!r} has no {weights}") from None
    except OSError as err:
        raise CheckpointError(f"{what} weights {str(wpath)!r} cannot be read: {err}") from err
    want_sha = meta.get("weights_sha256")
    if want_sha is not None and fingerprint(blob) != want_sha:
        raise CheckpointError(
            f"{what} weights {str(wpath)!r} do not match their sidecar (SHA-256 differs from weights_sha256): "
            "damaged, or replaced after the sidecar was written (e.g. a save interrupted between the two files); "
            "save it again"
        )
    try:
        return load_bytes(blob)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{what} weights {str(wpath)!r} are damaged: {err}") from err


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a checkpoint folder (raises CheckpointError when missing or damaged).

    Example::

        craftlab.read_meta("runs/mine")["architecture"]      # 'vit-tiny', without loading weights
    """
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


def scan_checkpoints(root: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, sidecar)`` of every readable checkpoint directly under `root`, sorted by folder name; folders
    whose sidecar is missing or unreadable are skipped (an interrupted write leaves no sidecar).

    Example::

        >>> scan_checkpoints("/nonexistent")
        []
    """
    root = Path(root)
    out = []
    for sidecar in sorted(root.glob("*/craftlab.json")) if root.is_dir() else []:
        try:
            out.append((sidecar.parent, read_meta(sidecar.parent)))
        except ValueError:
            continue
    return out


def load_checkpoint(
    directory: str | os.PathLike,
    expected_architecture: str | None = None,
    model: nn.Module | None = None,
) -> nn.Module:
    """Load a checkpoint folder into a fresh model (or into `model`, which must match).

    Raises CheckpointError naming the problem for a missing/damaged file or an architecture that
    differs from `expected_architecture` (or from `model`'s).

    Example::

        model = craftlab.load_checkpoint("runs/mine")      # the architecture comes from the sidecar
        model.craftlab_meta["data"]                          # {'name': 'digits'}
    """
    meta = read_meta(directory)
    arch = meta["architecture"]
    want = expected_architecture or (getattr(model, "craftlab_name", None) if model is not None else None)
    if want is not None and want != arch:
        raise CheckpointError(f"checkpoint {str(directory)!r} holds a {arch!r} model, not {want!r}")
    state = read_verified_weights(directory, meta)
    if model is None:
        from .models import build_model

        model = build_model(arch, num_classes=meta.get("num_classes"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        hint = ("; it holds a compressed model: load it with craftlab.load_compressed(path)"
                if meta.get("compression") else "")
        raise CheckpointError(
            f"checkpoint {str(directory)!r} does not fit a {arch!r} model with {meta.get('num_classes')} classes"
            f"{hint}: " + " ".join(first)
        ) from err
    model.craftlab_meta = meta  # type: ignore[attr-defined]
    return model.eval()
