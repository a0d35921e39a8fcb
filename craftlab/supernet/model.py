"""The quantization-aware supernet: a timm ViT (or any Conv/Linear model, bits only) whose subnets are configurations.

``supernet.set_config(cfg)`` switches every searchable layer to its bits and the ViT to the configuration's
resolution / depth / MLP width / heads; ``supernet(x)`` then runs that subnet; ``supernet.export(cfg)`` returns it
as a plain model of :class:`~craftlab.compression.quant.QuantLinear` / ``QuantConv2d`` layers (LoRA merged, weights
fake-quantized, same outputs); ``supernet.cost(cfg)`` gives its MACs, BitOPs and size. Build one with
:func:`craftlab.supernet.build.build_supernet`.

Cost conventions (those of :func:`craftlab.compression.quant.model_stats`, so ``cost(cfg)`` equals
``model_stats(export(cfg), x)``): MACs of every Conv2d/Linear (the attention matmuls are not counted);
BitOPs = Σ MACs·b_w·b_a with 32 bits for layers that are not searched (by default the patch embedding and the
classifier head stay FP32, as in ``craftlab.quantize``); size = quantized weights at b_w bits, every other
parameter of the subnet (biases, norms, embeddings) at 32.

Example::

    sn = build_supernet(model, data.calib)                      # per-bit LoRA, W{2,3,4,6,8} x A{4,6,8}
    cfg = sn.space.uniform(4, 8)
    sn.set_config(cfg); logits = sn(x)
    plain = sn.export(cfg)                                      # QuantLinear layers, same logits
    sn.cost(cfg)["bitops"] == craftlab.model_stats(plain, x[:1])["bitops"]
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import fingerprint
from ..compression.quant import QuantConv2d, QuantLinear
from ..measure.bitops import FP_BITS, bitops, forward_macs
from ..measure.size import size_mb
from .layers import SwitchableQuantConv2d, SwitchableQuantLinear
from .space import SearchSpace, SubnetConfig

BITOPS_CONVENTION = ("BitOPs = Σ Conv2d/Linear MACs · w_bits · a_bits (patch embedding, stem and head at 32x32) + "
                     "Σ attention matmul MACs (q·kᵀ, attn·v) · a_bits² (the block's qkv activation bits)")
"""How every supernet BitOPs figure is counted (printed beside the numbers by the CLI, the app and the benchmark)."""


def resize_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` (N, C, H, W) resized to size x size (bilinear, antialiased); unchanged when already that size."""
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Resized(nn.Module):
    """``model`` behind an input resize: an exported subnet that runs at another resolution than its inputs."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(resize_input(x, self.size))


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _plain_layer(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A QuantLinear / QuantConv2d holding `weight` (already fake-quantized) at `layer`'s current bits."""
    if isinstance(layer, SwitchableQuantLinear):
        q = QuantLinear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        q = QuantConv2d(weight.shape[1] * layer.groups, weight.shape[0], layer.kernel_size, layer.stride,
                        layer.padding, layer.dilation, layer.groups, bias is not None, layer.padding_mode,
                        device="meta")
    q.weight = nn.Parameter(weight.detach().clone())
    q.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
    q.w_bits, q.a_bits, q.a_symmetric = layer.w_bits, layer.a_bits, True
    q.register_buffer("a_scale", layer.act_step(layer.a_bits).detach().clone())
    q.register_buffer("a_zero_point", torch.zeros((), device=weight.device))
    return q


class Supernet(nn.Module):
    """A model whose every searchable layer runs at switchable bits, plus a ViT's structural operators.

    Attributes: ``net`` (the wrapped timm model, LoRA injected by peft), ``space`` (:class:`SearchSpace`),
    ``kind`` (``"vit"`` or ``"generic"``), ``input_size`` (C, H, W), ``lora_mode`` (``"shared"``, ``"per-bit"`` or
    None: full-weight), ``info`` (the build arguments, recorded in checkpoints).
    """

    def __init__(self, net: nn.Module, space: SearchSpace, kind: str, input_size: tuple[int, int, int],
                 lora_mode: str | None, info: dict[str, Any], other_params: list[tuple[str, int, int | None]],
                 fixed_layers: list[str]):
        super().__init__()
        self.net, self.space, self.kind, self.input_size = net, space, kind, tuple(input_size)
        self.lora_mode, self.info = lora_mode, info
        self._other_params, self._fixed = other_params, fixed_layers
        self._macs_cache: dict[tuple, tuple[list[int], list[tuple[int, int]], int, list[int]]] = {}
        self._attn = self._attention_modules()
        self._heads_index: dict[int, torch.Tensor] = {}
        self._config = space.largest()
        self.set_config(self._config)

    def _attention_modules(self) -> list[tuple[nn.Module, int]]:
        """(quantized attention module, index of its block's qkv layer) per ViT block with quantized matmuls."""
        if self.kind != "vit":
            return []
        from .attention import QuantAttention

        index = {n: i for i, n in enumerate(self.space.layers)}
        return [(blk.attn, index[f"blocks.{b}.attn.qkv"]) for b, blk in enumerate(self.net.blocks)
                if isinstance(blk.attn, QuantAttention) and f"blocks.{b}.attn.qkv" in index]

    # ---- configurations ------------------------------------------------------------------------------
    def layers(self) -> dict[str, SwitchableQuantLinear | SwitchableQuantConv2d]:
        """Searchable layers by name (the switchable layers themselves, inside any LoRA wrapper)."""
        out = {}
        for name in self.space.layers:
            m = self.net.get_submodule(name)
            out[name] = m.get_base_layer() if _is_lora(m) else m
        return out

    def wrappers(self) -> dict[str, nn.Module]:
        """LoRA wrappers by layer name (empty for a full-weight supernet)."""
        return {n: m for n in self.space.layers if _is_lora(m := self.net.get_submodule(n))}

    @property
    def config(self) -> SubnetConfig:
        """The configuration the supernet currently runs."""
        return self._config

    def set_config(self, cfg: SubnetConfig) -> None:
        """Run subnet `cfg` from now on (ValueError if a gene is outside the search space)."""
        cfg = self.space.validate(cfg)
        for layer, w, a in zip(self.layers().values(), cfg.w_bits, cfg.a_bits):
            layer.w_bits, layer.a_bits = w, a
        for attn, i in self._attn:  # q·kᵀ and attn·v at the activation bits of the block's qkv layer
            attn.a_bits = cfg.a_bits[i]
        if self.kind == "vit":
            self._apply_structure(cfg)
        self._config = cfg

    @contextlib.contextmanager
    def using(self, cfg: SubnetConfig) -> Iterator[Supernet]:
        """``with supernet.using(cfg):`` runs `cfg` inside the block and restores the previous configuration."""
        saved = self._config
        self.set_config(cfg)
        try:
            yield self
        finally:
            self.set_config(saved)

    def has_batchnorm(self) -> bool:
        """True when the network keeps BatchNorm running statistics (shared by every subnet as trained)."""
        from ..compression.bn import batchnorm_layers

        return bool(batchnorm_layers(self.net))

    @contextlib.contextmanager
    def subnet_bn(self, calib: Any | None) -> Iterator[Supernet]:
        """``with supernet.subnet_bn(data.calib):`` re-estimates the BatchNorm statistics *of the current subnet*
        on `calib` (OFA's per-subnet BN re-calibration, :func:`craftlab.compression.bn.recalibrate_bn_`) and puts
        the shared statistics back on exit. No-op without BatchNorm or with ``calib=None``."""
        from ..compression.bn import batchnorm_layers, recalibrate_bn_

        bns = batchnorm_layers(self.net) if calib is not None else {}
        saved = {n: {k: v.clone() for k, v in bn.state_dict().items()} for n, bn in bns.items()}
        try:
            if bns:
                recalibrate_bn_(self, calib)
            yield self
        finally:
            for n, bn in bns.items():
                bn.load_state_dict(saved[n])

    def _hidden(self, ratio: float) -> int:
        return int(self.net.embed_dim * ratio)

    def _qkv_rows(self, heads: int, total: int, head_dim: int) -> torch.Tensor:
        if heads not in self._heads_index:
            idx = torch.arange(heads * head_dim)
            self._heads_index[heads] = torch.cat([idx + k * total * head_dim for k in range(3)])
        return self._heads_index[heads]

    def _apply_structure(self, cfg: SubnetConfig) -> None:
        nat = self.space.native
        for blk in self.net.blocks:
            attn, mlp = blk.attn, blk.mlp
            if cfg.heads is not None and nat["heads"] is not None:
                full, hd = nat["heads"], attn.head_dim
                qkv, proj = _base(attn.qkv), _base(attn.proj)
                attn.num_heads, attn.attn_dim = cfg.heads, cfg.heads * hd
                if isinstance(qkv, SwitchableQuantLinear):
                    qkv.rows = None if cfg.heads == full else self._qkv_rows(cfg.heads, full, hd).to(qkv.weight.device)
                if isinstance(proj, SwitchableQuantLinear):
                    proj.cols = None if cfg.heads == full else cfg.heads * hd
            if cfg.mlp_ratio is not None:
                fc1, fc2 = _base(mlp.fc1), _base(mlp.fc2)
                hidden = self._hidden(cfg.mlp_ratio)
                full = fc1.out_features
                if isinstance(fc1, SwitchableQuantLinear):
                    fc1.rows = None if hidden == full else slice(0, hidden)
                if isinstance(fc2, SwitchableQuantLinear):
                    fc2.cols = None if hidden == full else hidden

    # ---- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self._config
        if cfg.resolution is not None:
            x = resize_input(x, cfg.resolution)
        if self.kind != "vit":
            return self.net(x)
        net = self.net
        x = net.patch_embed(x)
        x = self._pos_embed(x, cfg.resolution)
        x = net.norm_pre(net.patch_drop(x))
        for blk in list(net.blocks)[: cfg.depth]:
            x = blk(x)
        return net.forward_head(net.norm(x))

    def _grid(self, resolution: int) -> tuple[int, int]:
        p = self.net.patch_embed.patch_size
        return resolution // p[0], resolution // p[1]

    def resampled_pos_embed(self, resolution: int) -> torch.Tensor:
        """The position embedding resampled (timm's bicubic resampling) to the token grid of `resolution`."""
        from timm.layers import resample_abs_pos_embed

        net = self.net
        return resample_abs_pos_embed(net.pos_embed, new_size=list(self._grid(resolution)),
                                      old_size=list(net.patch_embed.grid_size),
                                      num_prefix_tokens=0 if net.no_embed_class else net.num_prefix_tokens)

    def _pos_embed(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        net = self.net
        if net.pos_embed is None or net.dynamic_img_size or resolution == self.space.native["resolution"]:
            return net._pos_embed(x)
        pos = self.resampled_pos_embed(resolution)  # the same operations as timm's _pos_embed, other grid
        to_cat = [t.expand(x.shape[0], -1, -1) for t in (net.cls_token, net.reg_token) if t is not None]
        if net.no_embed_class:
            x = x + pos
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
        else:
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
            x = x + pos
        return net.pos_drop(x)

    # ---- costs ---------------------------------------------------------------------------------------
    def _structure(self, cfg: SubnetConfig) -> tuple:
        return cfg.resolution, cfg.depth, cfg.mlp_ratio, cfg.heads

    @torch.no_grad()
    def _measure(self, cfg: SubnetConfig) -> tuple[list[int], list[tuple[int, int]], int, list[int]]:
        """(MACs per searchable layer, (weight, bias) numel per searchable layer, MACs of the fixed layers, MACs of
        the quantized attention matmuls per block) of `cfg`'s structure: one forward of a blank image with hooks,
        cached per structure."""
        key = self._structure(cfg)
        if key in self._macs_cache:
            return self._macs_cache[key]
        layers = self.layers()
        fixed_mods = [self.net.get_submodule(n) for n in self._fixed]
        with self.using(replace(self.space.largest(), resolution=cfg.resolution, depth=cfg.depth,
                                mlp_ratio=cfg.mlp_ratio, heads=cfg.heads)):
            dev = next(self.parameters()).device
            counts = forward_macs(self, torch.zeros(1, *self.input_size, device=dev),
                                  layers=[*layers.values(), *fixed_mods], attention=[m for m, _ in self._attn])
            numel = []
            for mod in layers.values():  # the active slice of each searchable layer, under the same structure
                w, b = mod.active_weight()
                numel.append((w.numel(), b.numel() if b is not None else 0) if mod in counts else (0, 0))
        macs = [counts.get(m, 0) for m in layers.values()]
        attn_macs = [counts.get(m, 0) for m, _ in self._attn]
        self._macs_cache[key] = (macs, numel, sum(counts.get(m, 0) for m in fixed_mods), attn_macs)
        return self._macs_cache[key]

    def cost(self, cfg: SubnetConfig | None = None) -> dict[str, float]:
        """Costs of subnet `cfg` (default: the current one). ``bitops`` = Σ Conv2d/Linear MACs · b_w · b_a (32 bits
        for unsearched layers) + Σ attention matmul MACs (q·kᵀ, attn·v) · b_a · b_a (the block's qkv activation
        bits; 0 when the supernet's attention is float); ``bitops_attention`` the attention part; ``macs`` the
        Conv2d/Linear MACs and ``macs_attention`` the attention matmuls'; ``size_bits`` / ``size_mb`` as
        ``model_stats`` counts the exported model. ``model_stats(export)["bitops"] == bitops - bitops_attention``."""
        cfg = self.space.validate(cfg) if cfg is not None else self._config
        macs, numel, fixed, attn_macs = self._measure(cfg)
        attn_bitops = sum(bitops(m, cfg.a_bits[i], cfg.a_bits[i]) for m, (_, i) in zip(attn_macs, self._attn))
        total = sum(bitops(m, w, a) for m, w, a in zip(macs, cfg.w_bits, cfg.a_bits)) + bitops(fixed, None, None)
        size = sum(nw * w + nb * FP_BITS for (nw, nb), w in zip(numel, cfg.w_bits))
        depth = cfg.depth
        for name, n, block in self._other_params:
            if block is not None and depth is not None and block >= depth:
                continue
            if name == "pos_embed" and cfg.resolution is not None and not self.net.dynamic_img_size:
                g = self._grid(cfg.resolution)
                prefix = 0 if self.net.no_embed_class else self.net.num_prefix_tokens
                n = (prefix + g[0] * g[1]) * self.net.embed_dim
            size += n * FP_BITS
        return {"macs": sum(macs) + fixed, "macs_attention": sum(attn_macs), "bitops": total + attn_bitops,
                "bitops_attention": attn_bitops, "size_bits": size, "size_mb": size_mb(size)}

    def bitops(self, cfg: SubnetConfig | None = None) -> float:
        """BitOPs of subnet `cfg` (default: the current one), attention matmuls included (:meth:`cost`)."""
        return self.cost(cfg)["bitops"]

    def references(self) -> dict[str, float]:
        """BitOPs of the base model in FP32 (every layer and attention matmul 32x32) and at W8A8 (the searchable
        layers and attention matmuls 8x8): the references a BitOPs reduction is quoted against."""
        macs, _, fixed, attn = self._measure(self.space.largest())
        return {"FP32": bitops(sum(macs) + fixed + sum(attn), None, None),
                "W8A8": bitops(sum(macs) + sum(attn), 8, 8) + bitops(fixed, None, None)}

    # ---- export --------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, cfg: SubnetConfig | None = None, bn_calib: Any | None = None) -> nn.Module:
        """Subnet `cfg` (default: the current one) as a plain quantized model: QuantLinear / QuantConv2d layers
        holding the fake-quantized ``W + LoRA`` of their bits, the blocks and heads it keeps, the position
        embedding of its resolution (behind :class:`Resized` when that is not the input's). Same outputs as the
        supernet set to `cfg` — inside ``subnet_bn(bn_calib)`` when `bn_calib` (calibration batches) is given: the
        BatchNorm statistics are then re-estimated for `cfg` (per-subnet BN)."""
        cfg = self.space.validate(cfg) if cfg is not None else self._config
        with self.using(cfg), self.subnet_bn(bn_calib):
            net = copy.deepcopy(self.net)
            for name, layer in self.layers().items():
                wrapper = self.net.get_submodule(name)
                delta = wrapper.delta() if _is_lora(wrapper) else None
                _set_module(net, name, _plain_layer(layer, *layer.quantized_weight(delta)))
        if hasattr(net, "peft_config"):
            del net.peft_config
        res = cfg.resolution
        if self.kind == "vit":
            from .attention import QuantAttention

            for blk in net.blocks:
                if isinstance(blk.attn, QuantAttention):
                    blk.attn.freeze()
                blk.attn.num_heads, blk.attn.attn_dim = cfg.heads, cfg.heads * blk.attn.head_dim
            net.blocks = nn.Sequential(*list(net.blocks)[: cfg.depth])
            if res != self.space.native["resolution"] and net.pos_embed is not None and not net.dynamic_img_size:
                net.pos_embed = nn.Parameter(self.resampled_pos_embed(res).detach().clone())
                pe = net.patch_embed
                pe.img_size, pe.grid_size = (res, res), self._grid(res)
                pe.num_patches = pe.grid_size[0] * pe.grid_size[1]
        for p in net.parameters():
            p.requires_grad_(True)
        layer_bits = {n: [w, a] for n, w, a in zip(self.space.layers, cfg.w_bits, cfg.a_bits)}
        info = {"supernet": {**cfg.to_dict(), "label": self.space.label(cfg), "layers": layer_bits}}
        net.craftlab_compression = {**getattr(net, "craftlab_compression", {}), **info}
        out = net if res is None or res == self.input_size[-1] else Resized(net, res)
        out.craftlab_compression = net.craftlab_compression
        return out.eval()

    # ---- parameters ----------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: ``lora``, ``steps`` (LSQ step sizes), ``weights`` (everything else)."""
        groups: dict[str, list[nn.Parameter]] = {"lora": [], "steps": [], "weights": []}
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            role = ("lora" if ".lora_A." in name or ".lora_B." in name
                    else "steps" if "_log_step." in name else "weights")
            groups[role].append(p)
        return groups

    def fingerprint(self) -> str:
        """SHA-256 of every tensor of the supernet and its search space (cache keys of search results)."""
        return fingerprint(self, salt=repr(self.space.to_dict()))


def _is_lora(m: nn.Module) -> bool:
    """A LoRA wrapper of :mod:`craftlab.supernet.lora` (checked by its methods: peft is imported only with LoRA)."""
    return hasattr(m, "adapters_in_use") and hasattr(m, "get_base_layer")


def _base(m: nn.Module) -> nn.Module:
    return m.get_base_layer() if _is_lora(m) else m
