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


# ------------------------------------------------------------------ the app's Supernet view (issue 22: its recipe)

VIEW_STAGES = ("loading the data", "fine-tuning the base model", "training the supernet", "searching subnets",
               "uniform subnets and uniform PTQ", "test accuracy of the Pareto front")
"""The steps of :func:`prepare_view`, in order (each skipped when cached)."""
VIEW_UNIFORM = ((8, 8), (6, 6), (4, 8), (4, 6), (4, 4), (3, 4), (2, 4))
"""Uniform subnets drawn beside the front (the same supernet at one bit-width everywhere)."""


def view_spec(model: str = "vit-tiny", seed: int = 0, data: str = "digits") -> SupernetSpec:
    """The study's main supernet (per-bit LoRA, progressive bits) on `model`: a CNN trains full weights instead
    (LoRA needs Linear layers), each subnet then scored with its own BatchNorm statistics.

    Example::

        >>> view_spec("resnet-tiny").lora
        'none'
    """
    main = notebook_specs((seed,))[f"per-bit/s{seed}"]
    cnn = not model.startswith("vit")
    return replace(main, model=model, data=data, **({"lora": "none"} if cnn else {}))


def _view_budgets(sn: Any) -> tuple[Any, ...] | None:
    """The study's quick budgets (3-6 % of FP32) where they fit (vit-tiny: the notebook's search, cached), else
    four budgets spread between the smallest subnet and W8A8 (a CNN's FP32 stem caps its reduction)."""
    low, refs = sn.bitops(sn.space.smallest()), sn.references()
    if all(float(b.rstrip("%")) / 100 * refs["FP32"] >= low for b in QUICK["budgets"]):
        return None
    return tuple(low + f * (refs["W8A8"] - low) for f in (0.1, 0.25, 0.5, 0.75))


def prepare_view(model: str = "vit-tiny", seed: int = 0, data: str = "digits",
                 on_stage: Any = None) -> dict[str, Any]:
    """Everything the app's Supernet view shows, computed once and cached: load (or train) :func:`view_spec`'s
    supernet on its fine-tuned base, run the quick search at the study's budgets (:func:`main_search`), score the
    uniform subnets (:data:`VIEW_UNIFORM`) and uniform PTQ of the base model (:data:`PTQ_SETTINGS`) on the
    validation split, and the test accuracy of the Pareto front of all those points. `on_stage(i)` is called as
    step ``VIEW_STAGES[i]`` starts. The extras are cached as JSON under ``$CRAFTLAB_HOME/explore/supernet`` (where
    the app kept them), keyed by the spec and the supernet's fingerprint.

    Returns ``{"supernet", "data", "report", "uniform", "ptq", "points", "front", "test", "front_gap",
    "references", "smallest"}``: ``points`` are the search's and the uniform subnets' validation rows sorted by
    BitOPs, ``test`` maps a configuration key to its test accuracy, ``front_gap`` is the front's mean validation −
    test accuracy.

    Example::

        >>> view = prepare_view("vit-tiny")  # doctest: +SKIP
        >>> view["front"][0]["label"], view["test"][view["front"][0]["config"].key()]  # doctest: +SKIP
    """
    from ..checkpoint import load_checkpoint
    from ..data import load_data
    from ..models import build_model
    from ..supernet import SubnetConfig, evaluate_configs, pareto_front
    from ..train.runs import get_run

    def stage(i: int) -> None:
        if on_stage is not None:
            on_stage(i)

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in row.items() if k != "config"}, "config": row["config"].to_dict()}

    spec = view_spec(model, seed, data)
    stage(0)
    data_bundle = load_data(spec.data, model=build_model(spec.model))
    stage(1)
    base_path = get_run(spec.base_run(), progress=False)
    stage(2)
    sn = load_supernet(get_supernet(spec))
    stage(3)
    _, report = main_search(seed, data_bundle, sn, budgets=_view_budgets(sn), quick=True)
    stage(4)
    space = sn.space
    path = cache.subdir("explore") / "supernet" / f"{spec.key}-{sn.fingerprint()[:16]}-v2.json"
    extras = cache.read_json(path) or {}
    if "uniform" not in extras:
        cfgs = [space.uniform(w, a) for w, a in VIEW_UNIFORM if w in space.w_bits and a in space.a_bits]
        cfgs += [] if any(c == space.smallest() for c in cfgs) else [space.smallest()]
        extras["uniform"] = [plain(p) for p in evaluate_configs(sn, data_bundle, cfgs, split="val")]
        extras["ptq"] = ptq_baselines(load_checkpoint(base_path), data_bundle, PTQ_SETTINGS, split="val")
    uniform = [{**p, "config": space.validate(SubnetConfig.from_dict(p["config"]))} for p in extras["uniform"]]
    seen = {p["config"].key(): p for p in [*uniform, *report.points]}  # the search's own score wins a tie
    points = sorted(seen.values(), key=lambda p: (p["bitops"], -p["accuracy"]))
    front = pareto_front(points)
    stage(5)
    test = extras.setdefault("test", {})
    todo = [p["config"] for p in front if p["config"].key() not in test]
    for row in evaluate_configs(sn, data_bundle, todo, split="test") if todo else []:
        test[row["config"].key()] = row["accuracy"]
    gaps = [p["accuracy"] - test[p["config"].key()] for p in front]
    cache.atomic_write_json(path, extras)
    return {"supernet": sn, "data": data_bundle, "report": report, "uniform": uniform, "ptq": extras["ptq"],
            "points": points, "front": front, "test": test, "front_gap": sum(gaps) / len(gaps),
            "references": sn.references(), "smallest": min(points, key=lambda p: p["bitops"])}
