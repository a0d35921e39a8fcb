"""One-shot unstructured and N:M pruning: magnitude, Wanda (Sun et al. 2023) and random.

``prune`` returns a new model with zeroed weights; the model passed in is never changed.
Targets default to every Conv2d/Linear weight except the stem (first conv / patch embedding) and
the classifier head.

Scores: magnitude ``|W|``; Wanda ``|W_ij| · ‖X_j‖₂`` with ``‖X_j‖₂`` the norm of input feature j over
all calibration tokens/pixels (for a Conv2d, j is the input channel: the norm is taken over batch and
spatial positions, a per-channel reconstruction of Wanda's linear-layer rule); random: seeded uniform.
Scopes: ``global`` (one ranking over all targets), ``layer`` (per weight tensor), ``row`` (per output
row — Wanda's comparison group). ``pattern="N:M"`` keeps the N highest-scoring of every M consecutive weights
along the input dimension (input channels for a Conv2d) and zeroes the other M − N, e.g. ``2:4``
(the sparse-tensor-core reading; see :mod:`craftlab.settings`).

Wanda's input statistics (``wanda_inputs``):

* ``"dense"`` (default): every layer's ‖X_j‖ comes from the unpruned model, in one calibration pass.
  This is what Wanda's vision code does (``image_classifiers/prune_utils.py::prune_vit`` hooks each
  block before pruning it, so all statistics are dense).
* ``"sequential"``: layers are pruned one at a time in forward order (the order of their first call,
  not of registration) and each layer's ‖X_j‖ is recomputed with every layer before it already
  pruned, so its inputs are the pruned model's. Wanda's LLM code (``lib/prune.py::prune_wanda``)
  does this per decoder block (the linears of one block share a pass on the block's input, then the
  pruned block's outputs feed the next); here it is per Conv2d/Linear, one calibration pass each.
  Needs a per-layer decision (``layer``/``row`` scope or a pattern).

``recalibrate_bn=True`` re-estimates BatchNorm running statistics on `calib` after pruning
(:func:`craftlab.compression.bn.recalibrate_bn`): pruning shifts every channel's mean and variance,
and stale statistics can collapse a pruned ResNet to chance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, Union

import torch
from torch import nn

from .._errors import check_sparsity, unknown_name
from ..registry import PRUNE_SCORERS
from ..settings import PRUNE_METHODS, SCOPES, parse_pattern
from ._calib import for_each_layer_input

METHODS = PRUNE_METHODS  # the built-in scores; PRUNE_SCORERS.names() also lists the ones registered at run time
Targets = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]  # noqa: UP007 (runtime alias, py3.10)


def target_layers(model: nn.Module, targets: Targets = None) -> dict[str, nn.Module]:
    """Conv2d/Linear modules to compress, by name.

    ``None``: all but the stem and the head; ``"all"``: all of them; a list of module names; or a
    predicate ``f(name, module) -> bool``.
    """
    from ..models import head_and_stem

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if targets is None:
        stem, head = head_and_stem(model)
        return {n: m for n, m in layers.items() if n not in (stem, head)}
    if targets == "all":
        return layers
    if callable(targets):
        return {n: m for n, m in layers.items() if targets(n, m)}
    names = [targets] if isinstance(targets, str) else list(targets)
    missing = [n for n in names if n not in layers]
    if missing:
        raise unknown_name("layer", missing[0], layers, hint="targets must name Conv2d/Linear modules")
    return {n: layers[n] for n in names}


@torch.no_grad()
def input_norms(model: nn.Module, layers: dict[str, nn.Module], calib: Iterable[Any],
                max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ per input feature j of each layer over the calibration inputs (Wanda's ``scaler_row``).

    Returns name -> tensor of shape (in_features,) or (in_channels,), in the order the layers first
    ran (forward order); a layer that never ran is absent.
    """
    sums: dict[str, torch.Tensor] = {}

    def accumulate(name: str, rows: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0) + rows.pow(2).sum(0)

    for_each_layer_input(model, layers, calib, accumulate, limit=max_samples, purpose="Wanda")
    return {n: s.sqrt() for n, s in sums.items()}


WANDA_INPUTS = ("dense", "sequential")


def _scores(scorer: Any, layers: dict[str, nn.Module], norms: dict[str, torch.Tensor] | None,
            gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in layers.items():
        norm = None
        if scorer.needs_calib:
            if name not in norms:
                raise ValueError(f"layer {name!r} never ran on the calibration images: no input statistics for "
                                 f"{type(scorer).__name__}")
            norm = norms[name]
        out[name] = scorer.score(m, m.weight.detach(), input_norm=norm, generator=gen).float()
    return out


def _mask_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (same shape as `scores`) that is True at its k lowest entries (ties: lower index first)."""
    flat = scores.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        idx = torch.argsort(flat, stable=True)[:k]
        mask[idx] = True
    return mask.view_as(scores)


def _nm_mask(scores: torch.Tensor, keep: int, m: int, name: str, conv: bool) -> torch.Tensor:
    """True at the m − keep lowest of every m consecutive inputs (Linear: along in_features, Conv2d: along C_in)."""
    s = scores.permute(0, 2, 3, 1) if conv else scores  # conv: (O, kh, kw, C_in)
    size = s.shape[-1]
    if size % m:
        raise ValueError(f"impossible N:M pattern {keep}:{m} for layer {name!r}: its input dimension {size} "
                         f"is not a multiple of M={m}")
    groups = s.reshape(-1, m)
    idx = torch.topk(groups, m - keep, dim=1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, idx, True).view_as(s)
    return mask.permute(0, 3, 1, 2) if conv else mask


def _layer_mask(name: str, mod: nn.Module, score: torch.Tensor, sparsity: float | None, scope: str | None,
                nm: tuple[int, int] | None) -> torch.Tensor:
    """The zero mask of one layer under a per-layer rule: an N:M pattern, ``layer`` or ``row`` scope."""
    if nm is not None:
        return _nm_mask(score, *nm, name, isinstance(mod, nn.Conv2d))
    if scope == "layer":
        return _mask_lowest(score, round(sparsity * score.numel()))
    rows = score.reshape(score.shape[0], -1)
    k = round(sparsity * rows.shape[1])
    idx = torch.argsort(rows, dim=1, stable=True)[:, :k]
    return torch.zeros_like(rows, dtype=torch.bool).scatter_(1, idx, True).view_as(score)


def check_prune_args(sparsity: float | None, method: str, scope: str | None, pattern: str | None,
                     calib: Any, wanda_inputs: str = "dense",
                     recalibrate_bn: bool = False) -> tuple[float | None, str | None, tuple[int, int] | None]:
    """Validate :func:`prune`'s arguments before any work; returns (sparsity, scope, (keep, M) or None)."""
    if method not in PRUNE_SCORERS:
        raise unknown_name("pruning method", method, PRUNE_SCORERS.names())
    scorer = PRUNE_SCORERS.get(method)
    if wanda_inputs not in WANDA_INPUTS:
        raise unknown_name("wanda_inputs", wanda_inputs, WANDA_INPUTS)
    nm = None
    if pattern is None:
        if sparsity is None:
            raise ValueError("give a sparsity in [0, 1) or an N:M pattern")
        sparsity = check_sparsity(sparsity)
        scope = scope or scorer.default_scope
        if scope not in SCOPES:
            raise unknown_name("pruning scope", scope, SCOPES)
    else:
        nm = parse_pattern(pattern)
        zeroed = (nm[1] - nm[0]) / nm[1]
        if sparsity is not None and abs(check_sparsity(sparsity) - zeroed) > 1e-9:
            raise ValueError(f"sparsity {sparsity} contradicts pattern {pattern!r} (which means {zeroed:g}); give one")
        sparsity, scope = None, None
    if scorer.needs_calib and calib is None:
        raise ValueError(f"method={method!r} needs calibration data: pass calib=<DataLoader or batches>")
    if wanda_inputs == "sequential":
        if not scorer.needs_calib:
            raise ValueError(f"wanda_inputs='sequential' applies to scores of the inputs (method='wanda'), not "
                             f"{method!r}")
        if scope == "global":
            raise ValueError("wanda_inputs='sequential' prunes layer by layer: use scope='layer' or 'row', or a "
                             "pattern (a global ranking needs every layer's scores at once)")
    if recalibrate_bn and calib is None:
        raise ValueError("recalibrate_bn=True needs calibration data: pass calib=<DataLoader or batches>")
    return sparsity, scope, nm


def prune(
    model: nn.Module,
    sparsity: float | None = None,
    method: str = "magnitude",
    scope: str | None = None,
    pattern: str | None = None,
    calib: Iterable[Any] | None = None,
    targets: Targets = None,
    seed: int = 0,
    calib_samples: int | None = None,
    wanda_inputs: str = "dense",
    recalibrate_bn: bool = False,
) -> nn.Module:
    """Return a pruned copy of `model`.

    Args:
        sparsity: fraction in [0, 1) of targeted weights to zero (not needed with `pattern`).
        method: a pruning score of :data:`craftlab.registry.PRUNE_SCORERS`: ``magnitude``, ``wanda`` (needs
            `calib`), ``random``, or one you registered (:mod:`craftlab.compression.scorers`).
        scope: ``global``, ``layer`` or ``row``; default: the score's (``global`` for magnitude/random, ``row``
            for Wanda).
        pattern: ``"N:M"`` semi-structured sparsity (keep N of every M); overrides scope.
        calib: calibration batches (Wanda, BatchNorm re-estimation): a DataLoader / iterable of (x, y) or tensors.
        targets: which layers (see :func:`target_layers`).
        seed: for ``random``.
        calib_samples: cap on calibration images.
        wanda_inputs: ``"dense"`` (statistics of the unpruned model, one pass; Wanda's vision code) or
            ``"sequential"`` (each layer's statistics with the earlier layers pruned; Wanda's LLM code).
        recalibrate_bn: re-estimate BatchNorm running statistics on `calib` after pruning.

    Global scope zeroes exactly ``round(sparsity * N)`` of the N targeted weights (lowest scores,
    ties broken by position); layer and row scope do the same per tensor / per output row.

    Example::

        pruned = craftlab.prune(model, 0.5)                                  # magnitude, global
        pruned = craftlab.prune(model, 0.7, method="wanda", calib=data.calib)  # per output row
        pruned = craftlab.prune(model, pattern="2:4", method="wanda", calib=data.calib)
        craftlab.sparsity_report(pruned)["sparsity"]
    """
    sparsity, scope, nm = check_prune_args(sparsity, method, scope, pattern, calib, wanda_inputs, recalibrate_bn)
    pruned = copy.deepcopy(model)
    layers = target_layers(pruned, targets)
    if not layers:
        raise ValueError("no layers to prune: targets selected no Conv2d/Linear module")
    scorer = PRUNE_SCORERS.get(method)()
    norms = None
    if scorer.needs_calib:
        norms = input_norms(pruned, layers, calib, max_samples=calib_samples)  # dense; in forward order
    gen = torch.Generator().manual_seed(seed)

    def apply(name: str, mask: torch.Tensor) -> None:
        with torch.no_grad():
            layers[name].weight.masked_fill_(mask.to(layers[name].weight.device), 0.0)

    if wanda_inputs == "sequential":
        order = [n for n in norms if n in layers] + [n for n in layers if n not in norms]
        for i, name in enumerate(order):
            if i > 0:  # the layers before it are pruned now: its inputs are the pruned model's
                norms = input_norms(pruned, {name: layers[name]}, calib, max_samples=calib_samples)
            score = _scores(scorer, {name: layers[name]}, norms, gen)[name]
            apply(name, _layer_mask(name, layers[name], score, sparsity, scope, nm))
    else:
        scores = _scores(scorer, layers, norms, gen)
        if scope == "global":
            flat = torch.cat([s.reshape(-1) for s in scores.values()])
            mask = _mask_lowest(flat, round(sparsity * flat.numel()))
            for name, part in zip(scores, torch.split(mask, [s.numel() for s in scores.values()])):
                apply(name, part.view_as(scores[name]))
        else:
            for name, mod in layers.items():
                apply(name, _layer_mask(name, mod, scores[name], sparsity, scope, nm))
    if recalibrate_bn:
        from .bn import recalibrate_bn_

        recalibrate_bn_(pruned, calib, calib_samples=calib_samples)
    info = {"method": method, "sparsity": sparsity, "scope": scope, "pattern": pattern, "layers": list(layers),
            "wanda_inputs": wanda_inputs if scorer.needs_calib else None, "recalibrate_bn": bool(recalibrate_bn)}
    pruned.craftlab_compression = {**getattr(model, "craftlab_compression", {}), "prune": info}
    return pruned


def sparsity_report(model: nn.Module, targets: Targets = None) -> dict[str, Any]:
    """Per-layer and overall fraction of zero weights.

    Returns ``{"layers": {name: {"zeros", "total", "sparsity", "targeted"}}, "overall": s_targets,
    "overall_all": s_all_conv_linear}`` where ``overall`` counts the targeted layers only.

    Example::

        craftlab.sparsity_report(craftlab.prune(model, 0.5))["sparsity"]   # 0.5 of the targeted weights
    """
    chosen = set(target_layers(model, targets))
    layers, z_t, n_t, z_a, n_a = {}, 0, 0, 0, 0
    for name, mod in target_layers(model, "all").items():
        zeros, total = int((mod.weight == 0).sum()), mod.weight.numel()
        layers[name] = {"zeros": zeros, "total": total, "sparsity": zeros / total, "targeted": name in chosen}
        z_a, n_a = z_a + zeros, n_a + total
        if name in chosen:
            z_t, n_t = z_t + zeros, n_t + total
    return {"layers": layers, "overall": z_t / max(n_t, 1), "overall_all": z_a / max(n_a, 1)}
