"""Directions in weight space for loss landscapes: Gaussian random directions normalized per filter or
layer (Li et al. 2018), and user directions (a dict name -> tensor, or a model) checked against the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._grid import Direction, named_params

DirectionLike = Mapping[str, torch.Tensor] | nn.Module

NORMALIZATIONS = ("filter", "layer", None)
IGNORES = ("biasbn", None)


def check_normalization(normalization: str | None, ignore: str | None) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if ignore not in IGNORES:
        raise ValueError(f"ignore must be one of {IGNORES}, got {ignore!r}")


def normalize_direction(direction: Mapping[str, torch.Tensor], model: nn.Module, normalization: str | None = "filter",
                        ignore: str | None = "biasbn") -> Direction:
    """Rescale `direction` to the scale of `model`'s weights (Li et al. 2018); returns a new dict.

    * ``"filter"``: for every parameter with ndim >= 2, each filter ``d[k]`` (slice along dim 0, i.e. one
      output row / conv filter) is rescaled to ``||w[k]|| / ||d[k]||``; an all-zero weight filter (or
      direction filter) gives an all-zero direction filter, never NaN.
    * ``"layer"``: the whole tensor is rescaled to ``||w|| / ||d||``.
    * ``None``: no rescaling.
    1-D (and 0-D) parameters - biases, norm-layer scales/shifts - are zeroed when ``ignore="biasbn"``
    (the paper's default), else rescaled as a whole to the parameter's norm (when normalizing).
    """
    check_normalization(normalization, ignore)
    params = named_params(model)
    out: Direction = {}
    for name, d in direction.items():
        w = params[name].detach()
        d = d.detach().to(device=w.device, dtype=w.dtype).clone()
        if w.ndim <= 1:
            if ignore == "biasbn":
                d.zero_()
            elif normalization is not None:
                d.mul_(_safe_ratio(w.norm(), d.norm()))
        elif normalization == "filter":
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            d.mul_(_safe_ratio(wn, dn).reshape(-1, *([1] * (d.ndim - 1))))
        elif normalization == "layer":
            d.mul_(_safe_ratio(w.norm(), d.norm()))
        out[name] = d
    return out


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den == 0 (an all-zero direction filter stays zero)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _gaussian(model: nn.Module, gen: torch.Generator) -> Direction:
    """N(0, 1) tensors shaped like the parameters, drawn on CPU (same numbers on any device)."""
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
            for n, p in model.named_parameters()}


def random_direction(model: nn.Module, seed: int = 0, normalization: str | None = "filter",
                     ignore: str | None = "biasbn") -> Direction:
    """A Gaussian random direction ``name -> tensor`` (shapes of the parameters), normalized per Li et al. 2018.

    See :func:`normalize_direction` for ``normalization`` and ``ignore``; ``ignore="biasbn"`` zeroes 1-D
    parameters whatever the normalization. The numbers depend only on `seed` and the parameter shapes.
    """
    check_normalization(normalization, ignore)
    gen = torch.Generator().manual_seed(int(seed))
    return normalize_direction(_gaussian(model, gen), model, normalization, ignore)


def _as_direction(direction: DirectionLike, model: nn.Module) -> Direction:
    """A dict over all of `model`'s parameters (missing names -> zeros); validates names and shapes."""
    params = named_params(model)
    if isinstance(direction, nn.Module):
        direction = {n: p.detach() for n, p in direction.named_parameters()}
    if not isinstance(direction, Mapping):
        raise TypeError(f"a direction must be a dict name -> tensor or an nn.Module, got {type(direction).__name__}")
    unknown = sorted(set(direction) - set(params))
    if unknown:
        raise ValueError(f"direction has names the model lacks: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    out: Direction = {}
    for n, p in params.items():
        if n in direction:
            d = torch.as_tensor(direction[n]).detach()
            if tuple(d.shape) != tuple(p.shape):
                raise ValueError(f"direction[{n!r}] has shape {tuple(d.shape)}, the parameter {tuple(p.shape)}")
            out[n] = d.to(device=p.device, dtype=p.dtype)
        else:
            out[n] = torch.zeros_like(p.detach())
    return out


def resolve_direction(model: nn.Module, direction: DirectionLike | None, normalization: str | None, ignore: str | None,
                      gen: torch.Generator) -> Direction:
    """`direction` as a full dict over `model`'s parameters (a Gaussian one from `gen` when None), normalized."""
    if direction is None:
        return normalize_direction(_gaussian(model, gen), model, normalization, ignore)
    d = _as_direction(direction, model)
    return normalize_direction(d, model, normalization, ignore) if normalization is not None else d
