"""Supernet checkpoints and the cache of trained supernets.

A supernet checkpoint is a folder with ``supernet.safetensors`` (every tensor: base weights, LoRA adapters, step
sizes) and ``craftlab.json`` (format ``craftlab-supernet``: the base architecture, the build arguments, the search
space, training history and metrics, the weights' SHA-256), each written atomically. Loading rebuilds the supernet
from the recorded arguments and refuses a checkpoint made from another base model.

:class:`SupernetSpec` names a trained supernet by every argument that changes it; :func:`get_supernet` trains it
once (base model from the run cache, :func:`craftlab.get_run`) into ``$CRAFTLAB_HOME/supernets/<key>``.

Example::

    path = get_supernet(SupernetSpec(model="vit-tiny", lora="per-bit", seed=0))
    sn = load_supernet(path)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import cache
from ..cache import fingerprint
from ..checkpoint import CheckpointError, read_verified_weights, write_weights_and_sidecar
from .model import Supernet

WEIGHTS = "supernet.safetensors"
SIDECAR = "craftlab.json"
FORMAT = "craftlab-supernet"
RECIPE = 1
"""Version of the training code: part of every cache key, bumped when a change alters trained supernets."""


def save_supernet(supernet: Supernet, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Save `supernet` to `directory` (created); `meta` (history, metrics, spec...) goes into the sidecar."""
    directory = Path(directory)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in supernet.state_dict().items()}
    sidecar = {"format": FORMAT, "architecture": supernet.info["architecture"], "kind": supernet.kind,
               "build": supernet.info, "space": supernet.space.to_dict(), **(meta or {})}
    return write_weights_and_sidecar(directory, state, sidecar, {"format": FORMAT}, weights=WEIGHTS)


def read_supernet_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a supernet checkpoint (CheckpointError when missing, damaged or not a supernet)."""
    path = Path(directory) / SIDECAR
    if not path.exists():
        raise CheckpointError(f"{str(directory)!r} is not a craftlab supernet checkpoint (no {SIDECAR})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"supernet sidecar {str(path)!r} is damaged: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        kind = "a model checkpoint, not a supernet" if isinstance(meta, dict) and "architecture" in meta else \
            "not a supernet checkpoint"
        raise CheckpointError(f"{str(directory)!r} is {kind} (format {FORMAT!r} expected)")
    return meta


def load_supernet(directory: str | os.PathLike, expected_architecture: str | None = None,
                  base_model: Any = None) -> Supernet:
    """Load a supernet checkpoint. `expected_architecture` / `base_model` (the model it should have been made
    from: same architecture and, for LoRA supernets, the same frozen weights) make a mismatch a CheckpointError."""
    from .build import build_supernet, model_fingerprint

    meta = read_supernet_meta(directory)
    info = meta["build"]
    arch = meta["architecture"]
    want = expected_architecture or (getattr(base_model, "craftlab_name", None) if base_model is not None else None)
    if want is not None and want != arch:
        raise CheckpointError(f"supernet checkpoint {str(directory)!r} was made from a {arch!r} model, not {want!r}")
    if base_model is not None and info.get("lora") and model_fingerprint(base_model) != info.get("base_fingerprint"):
        raise CheckpointError(f"supernet checkpoint {str(directory)!r} was made from another {arch!r} base model "
                              "(its frozen weights differ from the given model's): load it without base_model, or "
                              "build a new supernet from this model")
    state = read_verified_weights(directory, meta, weights=WEIGHTS, what="supernet checkpoint")
    if base_model is None:
        from ..models import build_model

        base_model = build_model(arch, num_classes=info.get("num_classes"))
    args = {k: info.get(k) for k in ("w_bits", "a_bits", "resolutions", "depths", "mlp_ratios", "heads", "lora",
                                     "rank", "alpha", "train_head", "seed")}
    args["quant_attention"] = bool(info.get("quant_attention", False))  # supernets saved before: float attention
    targets = info.get("targets")
    if targets == "callable":
        raise CheckpointError("this supernet was built with a callable `targets`: rebuild it and load its state dict")
    sn = build_supernet(base_model, None, step_init=None, targets=targets,
                        input_size=tuple(info["input_size"]), **args)
    sn.info = info
    try:
        sn.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"supernet checkpoint {str(directory)!r} does not fit the rebuilt supernet: "
                              + " ".join(str(err).splitlines()[:3])) from err
    sn.craftlab_meta = meta
    return sn.eval()


@dataclass(frozen=True)
class SupernetSpec:
    """A trained supernet, named by everything that changes it: the base run (model, data, its fine-tuning epochs
    and SAM radius, the seed), the search space, the LoRA mode and the training recipe."""

    model: str = "vit-tiny"
    data: str = "digits"
    base_epochs: int = 8
    base_sam_rho: float = 0.0
    lora: str = "per-bit"
    rank: int = 4
    w_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_bits: tuple[int, ...] = (4, 6, 8)
    resolutions: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    mlp_ratios: tuple[float, ...] | None = None
    heads: tuple[int, ...] | None = None
    epochs: int = 6
    lr: float = 2e-3
    n_random: int = 2
    progressive: bool = True
    quant_attention: bool = True
    seed: int = 0

    @property
    def key(self) -> str:
        """Folder name in the cache: readable prefix + a hash of every field."""
        digest = fingerprint(_spec_json(self))[:10]
        prog = "prog" if self.progressive else "flat"
        return f"{self.model}-{self.data}-{self.lora}-{prog}-e{self.epochs}-s{self.seed}-{digest}"

    def base_run(self) -> Any:
        from ..train.runs import RunSpec

        return RunSpec(model=self.model, data=self.data, epochs=self.base_epochs, sam_rho=self.base_sam_rho,
                       seed=self.seed)


def supernet_dir(spec: SupernetSpec) -> Path:
    return cache.home() / "supernets" / spec.key


def _spec_json(spec: SupernetSpec) -> dict[str, Any]:
    return {**json.loads(json.dumps(asdict(spec), default=list)), "recipe": RECIPE}


def get_supernet(spec: SupernetSpec, progress: bool = False) -> Path:
    """The checkpoint folder of `spec`, training it first when it is not cached (base run from the run cache)."""
    path = supernet_dir(spec)
    try:
        if read_supernet_meta(path).get("spec") == _spec_json(spec):
            return path
    except CheckpointError:
        pass
    from ..checkpoint import load_checkpoint
    from ..data import load_data
    from ..evaluation import evaluate
    from ..models import build_model
    from ..train.finetune import eval_loader
    from ..train.runs import get_run
    from .build import build_supernet
    from .train import train_supernet

    data = load_data(spec.data, model=build_model(spec.model))
    base = load_checkpoint(get_run(spec.base_run(), progress=progress))
    sn = build_supernet(base, data.calib, w_bits=spec.w_bits, a_bits=spec.a_bits, resolutions=spec.resolutions,
                        depths=spec.depths, mlp_ratios=spec.mlp_ratios, heads=spec.heads,
                        lora=None if spec.lora == "none" else spec.lora, rank=spec.rank, seed=spec.seed,
                        quant_attention=spec.quant_attention)
    res = train_supernet(sn, data, epochs=spec.epochs, lr=spec.lr, n_random=spec.n_random,
                         progressive=spec.progressive, seed=spec.seed, progress=progress)
    metrics = {}
    for tag, cfg in (("largest", res.supernet.space.largest()), ("smallest", res.supernet.space.smallest())):
        with res.supernet.using(cfg):
            metrics[f"test_accuracy_{tag}"] = evaluate(res.supernet, eval_loader(data, "test"))["accuracy"]
    meta = {"spec": _spec_json(spec), "history": res.history, "train": res.config, "metrics": metrics,
            "train_time_s": res.train_time_s, "memory": res.memory.to_dict() if res.memory else None,
            "base_run": str(get_run(spec.base_run(), progress=False))}
    return save_supernet(res.supernet, path, meta)

