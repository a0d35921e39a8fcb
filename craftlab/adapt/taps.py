"""Feature taps of a frozen vision transformer, and an on-disk feature cache that refuses stale entries.

Naming (LAST/MIET's): ``z_0`` = the token sequence entering the first block (patch embedding, prefix tokens,
position embedding, ``norm_pre``); ``z_i`` = the output of block i (1 ≤ i ≤ L). Every z is the *whole* token
sequence, prefix (CLS) tokens first, shape (N, d). ``pooled`` is the model's pre-logits feature (the final
normed CLS token of a timm ViT): what a linear probe reads.

Taps are computed in eval mode under ``torch.no_grad()``: no autograd graph is built through the backbone, so
nothing it computes is kept for backward and its parameters never get a gradient. Block outputs come from
timm's own ``forward_intermediates`` where the model has it (timm ≥ 1.0 ViTs); ``z_0`` from a pre-hook on the
first block, in the same forward pass. Other models with a ``blocks`` sequence fall back to forward hooks.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..cache import atomic_write, fingerprint

FORMAT = "craftlab-features/1"


class StaleFeatureCache(ValueError):
    """A cached feature file was made from other weights, data, transform or taps than asked for."""


@dataclass
class Features:
    """Tapped features of a dataset split: ``z`` (n, T, N, d) holds z_t for t in ``taps`` (in that order),
    ``pooled`` (n, d) the pre-logits features, ``y`` (n,) the labels. Tensors on the CPU, no grad."""

    z: torch.Tensor
    taps: tuple[int, ...]
    pooled: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def tap(self, i: int) -> torch.Tensor:
        """z_i, shape (n, N, d)."""
        if i not in self.taps:
            raise ValueError(f"z_{i} was not tapped; these features hold z_t for t in {list(self.taps)}")
        return self.z[:, self.taps.index(i)]

    def select(self, taps: Sequence[int]) -> torch.Tensor:
        """z_t for t in `taps`, stacked: (n, len(taps), N, d)."""
        return torch.stack([self.tap(t) for t in taps], 1)


# ------------------------------------------------------------------------------------- the model side


def depth(model: nn.Module) -> int:
    """Number of transformer blocks L of a ViT-style model (one with a ``blocks`` sequence)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        name = getattr(model, "craftlab_name", type(model).__name__)
        raise ValueError(f"feature taps need a transformer with a `blocks` sequence (a timm ViT such as vit-tiny); "
                         f"{name} has none")
    return len(blocks)


def check_taps(model: nn.Module, taps: Iterable[int] | None) -> tuple[int, ...]:
    """`taps` (default: all, 0..L) as a sorted tuple of distinct ints in [0, L]; a clear error otherwise."""
    L = depth(model)
    if taps is None:
        return tuple(range(L + 1))
    taps = list(taps)
    for t in taps:
        if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t <= L:
            raise ValueError(f"tap index {t!r} is outside the model's depth: z_0 … z_{L} exist (L = {L} blocks)")
    if not taps:
        raise ValueError("taps must name at least one of z_0 … z_L")
    return tuple(sorted({int(t) for t in taps}))


def last_taps(model: nn.Module, gap: object) -> tuple[int, ...]:
    """LAST's taps at gap factor g: z_0, z_g, z_2g, …, z_L (m = L / g side blocks); g must divide L."""
    L = depth(model)
    if not isinstance(gap, numbers.Integral) or isinstance(gap, bool) or not 1 <= gap <= L:
        raise ValueError(f"gap g = {gap!r} is outside the model's depth: one side block every g blocks needs "
                         f"1 <= g <= L = {L}")
    if L % gap:
        divisors = [g for g in range(1, L + 1) if L % g == 0]
        raise ValueError(f"gap g = {gap} does not divide the depth L = {L}: m = L / g side blocks need g in {divisors}")
    return tuple(range(0, L + 1, int(gap)))


def _tokens(item: Any) -> torch.Tensor:
    """One forward_intermediates item as the whole token sequence (prefix tokens first)."""
    if isinstance(item, tuple):
        spatial, prefix = item
        return torch.cat([prefix, spatial], 1) if prefix is not None else spatial
    return item


def _pooled(model: nn.Module, final: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "forward_head"):
        return model.forward_head(final, pre_logits=True)
    return final[:, 0]


def tap_batch(model: nn.Module, x: torch.Tensor,
              taps: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tapped features of one batch of images: ``(z, pooled)`` with z of shape (B, T, N, d) for t in `taps`.

    Runs `model` in eval mode under ``no_grad`` and puts its train/eval flags back; parameters are untouched.

    >>> z, pooled = tap_batch(craftlab.create_model("vit-tiny", num_classes=10), x, taps=[0, 2, 4])  # doctest: +SKIP
    """
    taps = check_taps(model, taps)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    seen: list[torch.Tensor] = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))]
    try:
        with torch.no_grad():
            if callable(getattr(model, "forward_intermediates", None)):
                final, inter = model.forward_intermediates(x, indices=None, return_prefix_tokens=True,
                                                           norm=False, output_fmt="NLC")
                blocks = [_tokens(t) for t in inter]
            else:  # a ViT-style model without timm's API: hooks on every block
                outs: list[torch.Tensor] = []
                hooks += [b.register_forward_hook(lambda m, a, out: outs.append(out)) for b in model.blocks]
                final = model.forward_features(x)
                blocks = outs
            pooled = _pooled(model, final)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
    all_z = [seen[0], *blocks]
    return torch.stack([all_z[t] for t in taps], 1), pooled


# ------------------------------------------------------------------------------------- fingerprints


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the backbone's parameters and buffers (names, dtypes, shapes, bytes), the classifier head
    excluded (a new head does not change the features)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    skip = {id(t) for t in (*head.parameters(), *head.buffers())} if isinstance(head, nn.Module) else set()
    kept = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in skip}
    return fingerprint(kept)


def _base(ds: Dataset) -> Dataset:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def data_fingerprint(dataset: Dataset, n_sample: int = 64) -> dict[str, Any]:
    """What identifies a split's inputs: its length, its transform (repr, addresses removed) and a SHA-256 of its
    content: every tensor of an in-memory dataset (``TensorDataset`` or a ``Subset`` of one), else the first
    `n_sample` examples as served (after their transform)."""
    n = len(dataset)  # type: ignore[arg-type]
    transform = getattr(_base(dataset), "transform", None)
    base = _base(dataset)
    if isinstance(base, TensorDataset):
        idx = torch.arange(len(base))
        ds = dataset
        chain = []
        while isinstance(ds, Subset):
            chain.append(torch.as_tensor(ds.indices))
            ds = ds.dataset
        for sub in reversed(chain):
            idx = idx[sub]
        tensors = {f"t{i}": t[idx] for i, t in enumerate(base.tensors)}
        content = "all"
    else:
        tensors = {}
        for i in range(min(n, n_sample)):
            x, y = dataset[i]
            tensors[f"x{i:06d}"], tensors[f"y{i:06d}"] = torch.as_tensor(x), torch.tensor(int(y))
        content = f"first {min(n, n_sample)}"
    shown = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))  # an address changes from run to run
    return {"n": n, "transform": shown, "content": content, "sha256": fingerprint(tensors)}


# ------------------------------------------------------------------------------------- extraction + cache


def _split_set(data: Any, split: str) -> Dataset:
    sets = {"train": "train_set", "val": "val_set", "test": "test_set", "calib": "calib_set"}
    if isinstance(data, Dataset):
        return data
    if split not in sets:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(map(repr, sets))})")
    return getattr(data, sets[split])


def _compute(model: nn.Module, dataset: Dataset, taps: tuple[int, ...], batch_size: int,
             device: torch.device | None) -> Features:
    dev = device or next(model.parameters()).device
    zs, pooled, ys = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0))
    for x, y in loader:
        z, p = tap_batch(model, x.to(dev), taps)
        zs.append(z.cpu())
        pooled.append(p.cpu())
        ys.append(torch.as_tensor(y))
    if not ys:
        raise ValueError("the split holds no examples")
    return Features(torch.cat(zs), taps, torch.cat(pooled), torch.cat(ys).long())


def extract(model: nn.Module, data: Any, split: str = "train", taps: Iterable[int] | None = None,
            batch_size: int = 256, cache: str | Path | None = None, name: str | None = None,
            overwrite: bool = False, device: str | torch.device | None = None) -> Features:
    """Tapped features of a whole split (dataset order, the split's own transform), optionally cached on disk.

    Args:
        data: a :class:`~craftlab.data.DataBundle` (then `split` picks ``train``/``val``/``test``/``calib``) or
            a torch ``Dataset``.
        taps: which z_t to keep (default all, 0..L); an index outside [0, L] is an error.
        cache: a folder. The entry ``<cache>/<name>.safetensors`` records the backbone's weights
            (:func:`weights_fingerprint`), the split's content and transform (:func:`data_fingerprint`) and
            the taps. An entry that matches is loaded (the backbone does not run); one that differs in any of
            them raises :class:`StaleFeatureCache` naming what differs: it is never reused silently.
            ``overwrite=True`` replaces it.
        name: the entry's name (default ``<model>-<data>-<split>-z<taps>-<first 12 hex of the weights' hash>``).

    >>> feats = extract(model, data, "train", cache="features/")  # doctest: +SKIP
    >>> feats.z.shape  # (n, L + 1, N, d)                         # doctest: +SKIP
    """
    taps = check_taps(model, taps)
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dataset = _split_set(data, split)
    dev = torch.device(device) if device is not None else None
    if cache is None:
        return _compute(model, dataset, taps, batch_size, dev)
    weights = weights_fingerprint(model)
    want = {"format": FORMAT, "weights_sha256": weights, "data": data_fingerprint(dataset), "taps": list(taps),
            "model": getattr(model, "craftlab_name", type(model).__name__)}
    if name is None:
        data_name = getattr(data, "name", type(dataset).__name__)
        name = f"{want['model']}-{data_name}-{split}-z{'.'.join(map(str, taps))}-{weights[:12]}"
    path = Path(cache) / f"{_safe(name)}.safetensors"
    if path.exists() and not overwrite:
        return _load(path, want)
    feats = _compute(model, dataset, taps, batch_size, dev)
    _save(path, feats, want)
    return feats


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def _save(path: Path, feats: Features, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {"z": feats.z.contiguous(), "pooled": feats.pooled.contiguous(), "y": feats.y.contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"craftlab": json.dumps(meta, sort_keys=True)}))


def _load(path: Path, want: dict[str, Any]) -> Features:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta_text = (f.metadata() or {}).get("craftlab")
        try:
            have = json.loads(meta_text) if meta_text else {}
        except ValueError:
            have = {}
        diffs = _differences(have, want)
        if diffs:
            raise StaleFeatureCache(
                f"feature cache {str(path)!r} is stale: {'; '.join(diffs)}. It is not reused: pass "
                "overwrite=True to recompute it, or another name / cache folder")
        z, pooled, y = f.get_tensor("z"), f.get_tensor("pooled"), f.get_tensor("y")
    return Features(z, tuple(want["taps"]), pooled, y)


def _differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    if have.get("format") != want["format"]:
        return [f"it is not a {want['format']} file (format {have.get('format')!r})"]
    out = []
    if have.get("weights_sha256") != want["weights_sha256"]:
        out.append(f"made from other backbone weights (sha256 {str(have.get('weights_sha256'))[:12]}…, "
                   f"these are {want['weights_sha256'][:12]}…)")
    hd, wd = have.get("data", {}), want["data"]
    if hd.get("transform") != wd["transform"]:
        out.append(f"made with another transform ({hd.get('transform')!r}, now {wd['transform']!r})")
    if hd.get("n") != wd["n"] or hd.get("sha256") != wd["sha256"]:
        out.append(f"made from other data ({hd.get('n')} examples, content sha256 {str(hd.get('sha256'))[:12]}…; "
                   f"now {wd['n']}, {wd['sha256'][:12]}…)")
    if have.get("taps") != want["taps"]:
        out.append(f"holds taps {have.get('taps')}, asked for {want['taps']}")
    return out
