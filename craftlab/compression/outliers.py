"""Outlier channels on demand: a function-preserving reparameterization of a ViT, for teaching PTQ.

Real ViTs carry a few post-LayerNorm channels whose range is tens to hundreds of times the median
channel's; that is what breaks per-tensor activation quantization and what RepQ-ViT repairs (it moves
each channel's scale from the LayerNorm into the next Linear's input columns). The zoo's tiny ViTs,
trained briefly on small digits, have no such channels (range ratios of about 1.4-2x), so every PTQ
recipe looks alike on them. :func:`plant_outliers` is the *inverse* of RepQ-ViT's reparameterization: for
a few channels ``c`` of each LayerNorm that feeds a Linear, it multiplies the LayerNorm's weight and bias
by ``s`` and divides the Linear's input column ``c`` by ``s``::

    LN'(x)_c = s * LN(x)_c ,   W'[:, c] = W[:, c] / s   =>   W' LN'(x) = W LN(x)

so the float model computes the same function (exactly in exact arithmetic; to float rounding in float32)
while its post-LayerNorm activations get real-ViT-like outlier channels. :func:`post_ln_range_ratio`
measures that statistic (max / median per-channel range of each LayerNorm's output, on a batch).

Example::

    m = plant_outliers(vit, scale=50.0, channels=2)       # same outputs, outlier channels
    post_ln_range_ratio(vit, x), post_ln_range_ratio(m, x)  # e.g. 1.7 -> 60
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ln_linear_pairs", "plant_outliers", "post_ln_range_ratio"]


def ln_linear_pairs(model: nn.Module) -> list[tuple[str, nn.LayerNorm, list[nn.Linear]]]:
    """The (LayerNorm, Linears reading its output) pairs of a timm ViT: ``norm1 -> attn.qkv`` and
    ``norm2 -> mlp.fc1`` in every block. ValueError when the model has none."""
    pairs = []
    for name, block in model.named_modules():
        for ln_name, lin_path in (("norm1", "attn.qkv"), ("norm2", "mlp.fc1")):
            ln = getattr(block, ln_name, None)
            lin: Any = block
            for part in lin_path.split("."):
                lin = getattr(lin, part, None)
            if isinstance(ln, nn.LayerNorm) and isinstance(lin, nn.Linear) and ln.elementwise_affine:
                pairs.append((f"{name}.{ln_name}" if name else ln_name, ln, [lin]))
    if not pairs:
        raise ValueError(f"{type(model).__name__} has no LayerNorm -> Linear pairs (norm1 -> attn.qkv, "
                         "norm2 -> mlp.fc1): plant_outliers is for timm Vision Transformers")
    return pairs


@torch.no_grad()
def plant_outliers(model: nn.Module, scale: float = 50.0, channels: int = 2, seed: int = 0) -> nn.Module:
    """A copy of `model` (a timm ViT) with `channels` outlier channels per LayerNorm, same float function.

    Args:
        scale: the factor ``s`` (> 1) each chosen channel's LayerNorm weight and bias are multiplied by;
            the next Linear's input column is divided by it.
        channels: outlier channels per LayerNorm (chosen at random from a local generator seeded by `seed`,
            the same channels in every LayerNorm of a block's width, as in real ViTs' "massive activations").
        seed: the channel choice; the caller's RNG is not used.

    Example::

        m = plant_outliers(vit)      # torch.allclose(m(x), vit(x), atol=1e-4): same predictions
    """
    if not float(scale) > 1.0:
        raise ValueError(f"scale must be > 1 (the outlier channels' range factor), got {scale!r}")
    pairs = ln_linear_pairs(model)
    width = pairs[0][1].normalized_shape[-1]
    if not 1 <= int(channels) <= width:
        raise ValueError(f"channels must be in [1, {width}] (the LayerNorm width), got {channels!r}")
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(width, generator=gen)[: int(channels)]
    for _, ln, lins in ln_linear_pairs(out):
        s = torch.ones(ln.normalized_shape[-1], dtype=ln.weight.dtype)
        s[chosen] = float(scale)
        ln.weight.mul_(s.to(ln.weight.device))
        if ln.bias is not None:
            ln.bias.mul_(s.to(ln.bias.device))
        for lin in lins:
            lin.weight.div_(s.to(lin.weight.device)[None, :])
    out.craftlab_outliers = {"scale": float(scale), "channels": chosen.tolist()}  # type: ignore[attr-defined]
    return out


@torch.no_grad()
def post_ln_range_ratio(model: nn.Module, x: torch.Tensor, reduce: str = "median") -> float:
    """Outlier statistic: for each LayerNorm feeding a Linear, the max / median of its output channels'
    ranges (max - min over the batch's tokens) on images `x`; the `reduce` (``median`` or ``max``) over LayerNorms.

    About 1.4-2 on the zoo vit-tiny; tens to hundreds on real ImageNet ViTs.

    Example::

        post_ln_range_ratio(vit, data.probe_batches(1)[0][0])
    """
    if reduce not in ("median", "max"):
        raise ValueError(f"reduce must be 'median' or 'max', got {reduce!r}")
    ratios: list[float] = []
    hooks = []

    def record(_m: nn.Module, _inp: Any, y: torch.Tensor) -> None:
        flat = y.detach().reshape(-1, y.shape[-1]).float()
        rng = flat.amax(0) - flat.amin(0)
        ratios.append(float(rng.max() / rng.median().clamp_min(1e-12)))

    for _, ln, _ in ln_linear_pairs(model):
        hooks.append(ln.register_forward_hook(record))
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    t = torch.tensor(ratios)
    return float(t.median() if reduce == "median" else t.max())
