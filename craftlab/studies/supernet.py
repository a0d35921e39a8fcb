"""The supernet study of notebooks/05_supernet and benchmarks/bench_supernet: which supernets, which budgets,
uniform-PTQ baselines, the ViT-B-sized memory stand-in, and one call that prepares the whole cache.

Example::

    specs = notebook_specs()                     # name -> SupernetSpec ("per-bit/s0", "shared/s1", "op:depth", ...)
    prepare_notebook()                           # = craftlab supernet train --preset notebook
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from .. import cache
from ..supernet.store import SupernetSpec, get_supernet, load_supernet

OPERATOR_STUDY = {"resolution": {"resolutions": (14, 21, 28)}, "depth": {"depths": (2, 3, 4)},
                  "mlp_ratio": {"mlp_ratios": (1.0, 1.5, 2.0)}, "heads": {"heads": (2, 3, 4)}}
"""The structural operators of the vit-tiny operator study: each alone, at W8A8, in its own supernet."""
OPERATOR_TRAINING = {"n_random": 4, "epochs": 8}
"""The sandwich rule trains the largest and smallest value at every step and a middle one only when sampled:
the operator supernets get more random subnets per step and more epochs so that their middle values train too."""
BUDGETS = ("3%", "3.5%", "4%", "5%", "6%", "8%")
"""Search budgets of the study, in % of the FP32 model's BitOPs (5% = the paper's 95% reduction)."""
SEARCH = {"population": 16, "generations": 6}
PTQ_SETTINGS = ("W8A8", "W6A6", "W4A8", "W4A4")
QUICK = {"seeds": (0,), "variant_epochs": 2, "operator_training": {"n_random": 2, "epochs": 2},
         "budgets": ("3%", "4%", "5%", "6%"), "search": {"population": 12, "generations": 4},
         "standin": {"model": "vit_small_patch16_224", "image_size": 64}}
"""The quick version of the study (notebooks/05_supernet by default, ~3 minutes from an empty cache on 2 cores):
one seed; the main supernet as in the full study; the LoRA-mode / progressive / full-weight comparison
(``short:<variant>/s<seed>``) and the operator supernets trained for fewer epochs; a smaller search; a ViT-S-sized
memory stand-in at 64 px. The full study (3 seeds) is :func:`notebook_specs` / the benchmark."""


def notebook_specs(seeds: tuple[int, ...] = (0, 1, 2), quick: bool = False) -> dict[str, SupernetSpec]:
    """Every supernet of the study, by name: per-bit LoRA with the progressive schedule (the main one), shared
    LoRA, per-bit without progression (``flat``) and full-weight training (``full``) for each seed; and one
    supernet per structural operator (``op:<name>``, seed 0, bits fixed at W8A8, :data:`OPERATOR_TRAINING`).

    ``quick=True`` (:data:`QUICK`): the main supernets ``per-bit/s<seed>`` unchanged; the four variants as
    ``short:<variant>/s<seed>``, trained ``QUICK["variant_epochs"]`` epochs; the operator supernets with
    ``QUICK["operator_training"]``."""
    main = SupernetSpec()
    out: dict[str, SupernetSpec] = {}
    prefix, short = ("short:", {"epochs": QUICK["variant_epochs"]}) if quick else ("", {})
    for s in seeds:
        out[f"per-bit/s{s}"] = replace(main, seed=s)
        if quick:
            out[f"short:per-bit/s{s}"] = replace(main, seed=s, **short)
        out[f"{prefix}shared/s{s}"] = replace(main, lora="shared", seed=s, **short)
        out[f"{prefix}flat/s{s}"] = replace(main, progressive=False, seed=s, **short)
        out[f"{prefix}full/s{s}"] = replace(main, lora="none", seed=s, **short)
    training = QUICK["operator_training"] if quick else OPERATOR_TRAINING
    for op, kw in OPERATOR_STUDY.items():
        out[f"op:{op}"] = replace(main, w_bits=(8,), a_bits=(8,), **training, **kw)
    return out


NO_DEGRADATION = "supernet-ni"
"""The claims ledger's row of the paper's "about 95 % BitOPs reduction without degradation"."""


def no_degradation(baseline: Any, treatment: Any) -> Any:
    """The "without degradation" check: the non-inferiority verdict of `treatment` (the subnet searched under 5 %
    of FP32 BitOPs) against `baseline` (FP32), paired by seed, with the ledger's effect of interest, margin and
    kind (:func:`craftlab.analysis.power.endpoint_verdict` on :func:`craftlab.analysis.ledger.claim`
    ``("supernet-ni")``); None with fewer than 2 seeds.

    >>> no_degradation([0.95, 0.96, 0.94], [0.949, 0.957, 0.942]).status
    'supports'
    """
    from ..analysis.ledger import claim
    from ..analysis.power import endpoint_verdict

    if len(baseline) != len(treatment):
        raise ValueError(f"paired by seed: {len(baseline)} baseline values, {len(treatment)} treatment values")
    if len(baseline) < 2:
        return None
    c = claim(NO_DEGRADATION)
    return endpoint_verdict(list(baseline), list(treatment), c.effect, margin=c.margin, kind=c.kind,
                            higher_is_better=c.higher_is_better, scale=100, unit=" pp")


def float_attention_macs(model: Any, x: Any) -> int:
    """MACs of the attention matmuls (q·kᵀ and attn·v) of one image `x` (1, C, H, W) in `model`'s timm
    ``Attention`` modules: ``2 · heads · N² · head_dim`` each (0 for a model without them)."""
    from timm.models.vision_transformer import Attention

    from ..measure.bitops import forward_macs

    return sum(forward_macs(model, x, attention=[m for m in model.modules() if isinstance(m, Attention)]).values())


def ptq_baselines(model: Any, data: Any, settings: tuple[str, ...] = PTQ_SETTINGS,
                  split: str = "test") -> list[dict[str, Any]]:
    """Uniform post-training quantization of `model` (``craftlab.quantize``, default targets, calibrated on
    ``data.calib``): per setting its accuracy on `split` and BitOPs; FP32 first. ``bitops`` follows the supernet's
    convention (:data:`craftlab.supernet.model.BITOPS_CONVENTION`): ``model_stats``'s Conv2d/Linear BitOPs
    (``bitops_conv_linear``) plus the attention matmuls, which ``craftlab.quantize`` leaves in float (32x32)."""
    from ..compression.quant import model_stats, quantize
    from ..evaluation import evaluate
    from ..measure.bitops import bitops
    from ..train.finetune import eval_loader

    x = next(iter(eval_loader(data, split)))[0][:1]
    attn = float_attention_macs(model, x)
    rows = []
    for label in ("FP32", *settings):
        m = model if label == "FP32" else quantize(model, w_bits=int(label[1]), a_bits=int(label[3]),
                                                   calib=data.calib)
        conv_linear = model_stats(m, x)["bitops"]
        rows.append({"label": label, "accuracy": evaluate(m, eval_loader(data, split))["accuracy"],
                     "bitops": conv_linear + bitops(attn, None, None), "bitops_conv_linear": conv_linear,
                     "macs_attention": attn})
    return rows


def standin_memory(model: str = "vit_base_patch16_224", batch: int = 2, image_size: int = 224,
                   modes: tuple[str, ...] = ("per-bit", "shared", "none"), seed: int = 0,
                   use_cache: bool = True) -> dict[str, dict[str, Any]]:
    """Training memory of one sandwich step (largest + smallest subnet) of a ViT-B-sized stand-in (timm `model`,
    random init, 10 classes, `batch` random images) for each LoRA mode; cached in ``$CRAFTLAB_HOME/supernet-memory``.
    About a minute on 2 CPU cores for the three modes."""
    import timm
    import torch

    from ..models import SeededRNG
    from ..supernet.build import build_supernet
    from ..supernet.train import step_memory

    args = {"model": model, "batch": batch, "image_size": image_size, "modes": list(modes), "seed": seed, "recipe": 3,
            "torch": torch.__version__}
    path = cache.subdir("supernet-memory") / (cache.fingerprint(args)[:16] + ".json")
    if use_cache and path.exists():
        return json.loads(path.read_text())["memory"]
    with SeededRNG(seed):
        vit = timm.create_model(model, pretrained=False, num_classes=10, img_size=image_size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen)
    y = torch.arange(batch) % 10
    out = {}
    for mode in modes:
        sn = build_supernet(vit, None, step_init=None, lora=None if mode == "none" else mode,
                            input_size=(3, image_size, image_size), seed=seed)
        out[mode] = step_memory(sn, x, y, seed=seed).to_dict()
        del sn
    if use_cache:
        path.write_text(json.dumps({"args": args, "memory": out}, indent=2))
    return out


def main_search(seed: int, data: Any, supernet: Any = None, budgets: tuple[str, ...] | None = None,
                cache: bool = True, quick: bool = False) -> Any:
    """The study's search on the main supernet of `seed` (loaded from the cache unless given; evaluations cached):
    ``(supernet, SearchReport)``. ``quick=True``: the budgets and search settings of :data:`QUICK`."""
    from ..supernet.search import search_budgets

    sn = supernet or load_supernet(get_supernet(notebook_specs((seed,))[f"per-bit/s{seed}"]))
    budgets = budgets or (QUICK["budgets"] if quick else BUDGETS)
    return sn, search_budgets(sn, data, list(budgets), seed=seed, cache=cache,
                              **(QUICK["search"] if quick else SEARCH))


def prepare_notebook(seeds: tuple[int, ...] = (0, 1, 2), progress: bool = True) -> None:
    """Train every supernet of :func:`notebook_specs` (the full study and the quick version), run the main
    searches and measure the memory stand-ins, so that notebooks/05_supernet (``FULL`` or not) and the benchmark
    find everything cached (``craftlab supernet train --preset notebook``; 10-15 minutes on 2 CPU cores from an
    empty cache, 20-30 on busy ones)."""
    from ..data import load_data

    full = notebook_specs(seeds)
    quick = {k: v for k, v in notebook_specs(QUICK["seeds"], quick=True).items() if v not in full.values()}
    items = list(full.items()) + [(f"{name} (quick)", spec) for name, spec in quick.items()]
    for i, (name, spec) in enumerate(items):
        if progress:
            print(f"[{i + 1}/{len(items)}] supernet {name}", flush=True)
        get_supernet(spec, progress=False)
    data = load_data("digits")
    for s in seeds:
        if progress:
            print(f"search: main supernet, seed {s}", flush=True)
        main_search(s, data)
    for s in QUICK["seeds"]:
        main_search(s, data, quick=True)
    if progress:
        print("memory: ViT-B-sized and ViT-S-sized stand-ins", flush=True)
    standin_memory()
    standin_memory(**QUICK["standin"])
