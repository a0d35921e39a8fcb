"""Turn a model into a quantization-aware supernet: validate the search space, swap the searchable layers for
switchable fake-quant ones, initialize their step sizes, add LoRA.

Example::

    model = craftlab.load_checkpoint(craftlab.get_run(craftlab.RunSpec(model="vit-tiny")))
    sn = build_supernet(model, data.calib, lora="per-bit", depths=(2, 3, 4), heads=(2, 3, 4))
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..cache import fingerprint
from ..compression.prune import target_layers
from .layers import make_switchable
from .model import Supernet
from .space import DEFAULT_A_BITS, DEFAULT_W_BITS, LORA_MODES, SearchSpace, check_candidates

STEP_INITS = ("mse", "minmax", "percentile")
CALIB_VALUES = 2**18
"""Most activation values per layer kept to initialize its activation step sizes."""


def is_vit(model: nn.Module) -> bool:
    """True for a timm ``VisionTransformer`` (the models with depth / width / heads operators here)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (which base model a supernet was made from)."""
    return fingerprint(model)


def _ints(values: Any, what: str, low: int, high: int, hint: str) -> tuple[int, ...]:
    vals = tuple(sorted(set(values)))
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ValueError(f"{what} {v!r} is not possible: {hint}")
    if not vals:
        raise ValueError(f"{what} needs at least one candidate")
    return vals


def structural_candidates(net: nn.Module, input_size: tuple[int, int, int], resolutions, depths, mlp_ratios, heads,
                          searchable: set[str]) -> dict[str, Any]:
    """Validated candidate tuples of the structural operators (None where the model has no such operator)."""
    native_res = int(input_size[-1])
    kind = "vit" if is_vit(net) else "generic"
    name = type(net).__name__
    if kind == "generic":
        for op, v in (("depth", depths), ("mlp_ratio", mlp_ratios), ("heads", heads)):
            if v is not None:
                raise ValueError(f"operator {op!r} is not supported for {name}: depth, MLP width and heads need a timm "
                                 "VisionTransformer; this model supports the operators bits and resolution")
        res = (native_res,) if resolutions is None else _ints(resolutions, "resolution", 8, 4096, "use 8..4096 px")
        return {"resolutions": res, "depths": None, "mlp_ratios": None, "heads": None}
    patch = net.patch_embed.patch_size[0]
    n_blocks, dim = len(net.blocks), net.embed_dim
    blk0 = net.blocks[0]
    n_heads, hidden = blk0.attn.num_heads, blk0.mlp.fc1.out_features
    res = (native_res,) if resolutions is None else _ints(
        resolutions, "resolution", patch, 4096, f"resolutions must be multiples of the patch size {patch}")
    if any(r % patch for r in res) or tuple(net.patch_embed.patch_size) != (patch, patch):
        raise ValueError(f"resolutions {res} must be multiples of the patch size {patch} (square patches)")
    out = {"resolutions": res,
           "depths": (n_blocks,) if depths is None else _ints(depths, "depth", 1, n_blocks,
                                                              f"this ViT has {n_blocks} blocks"),
           "heads": (n_heads,) if heads is None else _ints(heads, "heads", 1, n_heads,
                                                           f"this ViT has {n_heads} heads per block")}
    if mlp_ratios is None:
        out["mlp_ratios"] = (hidden / dim,)
    else:
        vals = tuple(sorted({float(r) for r in mlp_ratios}))
        for r in vals:
            if not (math.isfinite(r) and 1 <= int(dim * r) <= hidden):
                raise ValueError(f"mlp_ratio {r!r} is not possible: the MLP hidden width int({dim}·ratio) must be in "
                                 f"1..{hidden} (native ratio {hidden / dim:g})")
        out["mlp_ratios"] = vals
    for i, blk in enumerate(net.blocks):
        names = {"qkv": f"blocks.{i}.attn.qkv", "proj": f"blocks.{i}.attn.proj",
                 "fc1": f"blocks.{i}.mlp.fc1", "fc2": f"blocks.{i}.mlp.fc2"}
        if len(out["heads"]) > 1 and (getattr(blk.attn, "gate", None) is not None
                                      or not isinstance(blk.attn.norm, nn.Identity)
                                      or not {names["qkv"], names["proj"]} <= searchable):
            raise ValueError(f"operator 'heads' is not supported for block {i}: it needs timm's plain Attention "
                             "with searchable qkv and proj layers")
        if len(out["mlp_ratios"]) > 1 and (not isinstance(getattr(blk.mlp, "norm", nn.Identity()), nn.Identity)
                                           or not {names["fc1"], names["fc2"]} <= searchable):
            raise ValueError(f"operator 'mlp_ratio' is not supported for block {i}: it needs timm's Mlp with "
                             "searchable fc1 and fc2 layers")
    return out


@torch.no_grad()
def _sort_channels(net: nn.Module, mlp: bool, heads: bool) -> None:
    """Reorder MLP hidden units and attention heads by importance (L1 norm of the weights that read them, as
    OFA sorts channels), a function-preserving permutation: the first units / heads are kept by narrower subnets."""
    for blk in net.blocks:
        if mlp:
            fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
            order = fc2.weight.abs().sum(0).argsort(descending=True)
            fc1.weight.copy_(fc1.weight[order])
            if fc1.bias is not None:
                fc1.bias.copy_(fc1.bias[order])
            fc2.weight.copy_(fc2.weight[:, order])
        if heads:
            attn = blk.attn
            h, hd = attn.num_heads, attn.head_dim
            order = attn.proj.weight.abs().reshape(-1, h, hd).sum((0, 2)).argsort(descending=True)
            cols = (order[:, None] * hd + torch.arange(hd)).reshape(-1)
            rows = torch.cat([cols + k * h * hd for k in range(3)])
            attn.qkv.weight.copy_(attn.qkv.weight[rows])
            if attn.qkv.bias is not None:
                attn.qkv.bias.copy_(attn.qkv.bias[rows])
            attn.proj.weight.copy_(attn.proj.weight[:, cols])


@torch.no_grad()
def _layer_inputs(net: nn.Module, layers: dict[str, nn.Module], calib: Iterable[Any], batches: int,
                  values: int = CALIB_VALUES) -> dict[str, torch.Tensor]:
    """A sample of each layer's inputs on the float model (the first `batches` calibration batches)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: seen[n].append(inp[0].detach().flatten()))
               for n, m in layers.items()]
    dev = next(net.parameters()).device
    try:
        for batch in itertools.islice(calib, batches):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            net(x.to(dev))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, parts in seen.items():
        if not parts:
            raise ValueError(f"layer {n!r} never ran on the calibration images: cannot set its activation steps")
        flat = torch.cat(parts)
        out[n] = flat[:: max(1, flat.numel() // values)]
    return out


def build_supernet(
    model: nn.Module,
    calib: Iterable[Any] | None,
    *,
    w_bits: Iterable[int] = DEFAULT_W_BITS,
    a_bits: Iterable[int] = DEFAULT_A_BITS,
    resolutions: Iterable[int] | None = None,
    depths: Iterable[int] | None = None,
    mlp_ratios: Iterable[float] | None = None,
    heads: Iterable[int] | None = None,
    lora: str | None = "per-bit",
    rank: int = 4,
    alpha: float | None = None,
    targets: Any = None,
    step_init: str | None = "mse",
    calib_batches: int = 2,
    input_size: tuple[int, int, int] | None = None,
    train_head: bool = False,
    quant_attention: bool = True,
    seed: int = 0,
) -> Supernet:
    """A mixed-precision supernet over a copy of `model` (the model itself is not changed).

    Args:
        calib: batches (a DataLoader such as ``data.calib``) whose layer inputs initialize the activation steps.
        w_bits, a_bits: candidate weight / activation bit-widths of every searchable layer (2..8).
        resolutions, depths, mlp_ratios, heads: candidates of the structural operators (None: fixed at the model's;
            depth/width/heads need a timm VisionTransformer). A ViT's MLP hidden units and heads are reordered by
            importance first when their operator is elastic.
        lora: ``"per-bit"`` (one adapter per weight bit-width), ``"shared"`` (one for all) or None (no LoRA: every
            weight trainable, the full-weight supernet). With LoRA the base weights are frozen.
        rank, alpha: LoRA rank and alpha (default alpha = rank).
        targets: searchable layers, as in :func:`craftlab.quantize` (default: every Conv2d/Linear but the stem and
            the head, which stay FP32; ``"all"``; names; or a predicate).
        step_init: range estimator that initializes the LSQ step sizes (``mse``, ``minmax``, ``percentile``);
            None leaves every step at 1 (a checkpoint's steps are loaded over them).
        input_size: (C, H, W) of one input (default: the model's data config).
        train_head: with LoRA, train the classifier head too.
        quant_attention: a ViT's q·kᵀ and attn·v run on fake-quantized operands at the activation bits of the
            block's qkv layer and are counted in BitOPs (:mod:`craftlab.supernet.attention`); False keeps them
            float and uncounted (the behaviour of supernets built before).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if lora in ("none", "full"):
        lora = None
    if lora is not None and lora not in LORA_MODES:
        raise ValueError(f"lora must be one of {LORA_MODES} or None (full-weight training), got {lora!r}")
    if step_init is not None and step_init not in STEP_INITS:
        raise ValueError(f"step_init must be one of {STEP_INITS}, got {step_init!r}")
    w_bits, a_bits = check_candidates(w_bits, "w_bits candidates"), check_candidates(a_bits, "a_bits candidates")
    if input_size is None:
        from ..models import input_config

        try:
            input_size = tuple(input_config(model)["input_size"])
        except Exception as err:  # noqa: BLE001 - any model without timm's config
            raise ValueError("cannot tell this model's input size: pass input_size=(C, H, W)") from err
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    layers = target_layers(net, targets)
    if not layers:
        raise ValueError("no searchable layers: targets selected no Conv2d/Linear module")
    ops = structural_candidates(net, input_size, resolutions, depths, mlp_ratios, heads, set(layers))
    kind = "vit" if is_vit(net) else "generic"
    if kind == "vit":
        _sort_channels(net, mlp=len(ops["mlp_ratios"]) > 1, heads=len(ops["heads"]) > 1)
        net.patch_embed.strict_img_size = False
    names = list(layers)
    owned = {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    blocks = tuple(int(m.group(1)) if kind == "vit" and (m := re.match(r"blocks\.(\d+)\.", n)) else None
                   for n in names)
    other = [(n, p.numel(), int(m.group(1)) if kind == "vit" and (m := re.match(r"blocks\.(\d+)\.", n)) else None)
             for n, p in net.named_parameters() if n not in owned]
    fixed = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in layers]

    if calib is None and step_init is not None:
        raise ValueError("build_supernet needs calibration batches (e.g. data.calib) to initialize the activation "
                         "step sizes")
    attns = []
    if kind == "vit" and quant_attention:
        from .attention import quantize_attention

        for i, blk in enumerate(net.blocks):
            if f"blocks.{i}.attn.qkv" in layers:
                attns.append(quantize_attention(blk.attn, a_bits))
                attns[-1].a_bits, attns[-1].collect = None, {"q": [], "k": [], "v": []}
    try:
        samples = _layer_inputs(net, layers, calib, calib_batches) if calib is not None else {}
        for attn in attns:
            if step_init is not None:
                attn.init_steps(step_init)
    finally:
        for attn in attns:
            attn.a_bits, attn.collect = max(a_bits), None
    for name, layer in layers.items():
        new = make_switchable(layer, w_bits, a_bits)
        if step_init is not None:
            new.init_weight_steps(step_init)
        if name in samples and step_init is not None:
            new.init_act_steps(samples[name], step_init)
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)

    arch = getattr(model, "craftlab_name", type(model).__name__)
    nat = {"kind": kind, "architecture": arch, "resolution": int(input_size[-1])}
    if kind == "vit":
        nat.update(depth=len(net.blocks), heads=net.blocks[0].attn.num_heads,
                   mlp_ratio=net.blocks[0].mlp.fc1.out_features / net.embed_dim)
    else:
        nat.update(depth=None, heads=None, mlp_ratio=None)
    space = SearchSpace(layers=tuple(names), blocks=blocks, w_bits=w_bits, a_bits=a_bits, native=nat, **ops)
    if lora is not None:
        from .lora import add_lora  # imports peft

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            add_lora(net, names, lora, w_bits, rank=rank, alpha=alpha, seed=seed)
        for n, p in net.named_parameters():  # peft froze everything but the adapters
            p.requires_grad_(".lora_" in n or "_log_step." in n)
        if train_head and hasattr(net, "get_classifier"):
            for p in net.get_classifier().parameters():
                p.requires_grad_(True)
    info = {"architecture": arch, "num_classes": getattr(net, "num_classes", None), "w_bits": list(w_bits),
            "a_bits": list(a_bits), **{k: list(v) if v is not None else None for k, v in
                                       (("resolutions", resolutions), ("depths", depths), ("mlp_ratios", mlp_ratios),
                                        ("heads", heads))},
            "lora": lora, "rank": rank, "alpha": alpha, "targets": targets if targets in (None, "all") else
            (list(targets) if not callable(targets) else "callable"), "step_init": step_init,
            "input_size": list(input_size), "train_head": train_head, "seed": seed,
            "quant_attention": bool(attns),
            "base_fingerprint": model_fingerprint(model)}
    return Supernet(net, space, kind, input_size, lora, info, other, fixed)
