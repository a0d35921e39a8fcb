"""The SNT comparison frame: pretraining arms × seeds, fine-tuned on a target task, compressed, probed, tested.

SNT (arXiv 2305.04526v1) compares, at pretraining, the Adam baseline, a sharpness-minimizing optimizer and its
unpublished network transformation, then compresses. :func:`run_study` does that with the stand-in transforms
of :mod:`craftlab.transforms` (each alone and with SAM): every arm is a cached
:class:`~craftlab.train.pretrain_runs.PretrainSpec`, fine-tuned on the target task with one plain recipe
(:func:`~craftlab.train.pretrain.get_transfer`), and both the pretrained model (on the source task's test split)
and the fine-tuned one (on the target's) are swept over the same pruning and quantization settings and probed
for sharpness on THE probe batch. :func:`paired_families` pairs every arm with Adam seed by seed
(:func:`craftlab.analysis.stats.compare_arms`, Holm across the settings of a family); :func:`step_times` measures
the cost of a step of each arm, interleaved on one batch.

The notebook ``04_snt`` and ``benchmarks/bench_snt.py`` both run this module.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.stats import claim_verdict, compare_arms
from ..checkpoint import load_checkpoint
from ..data import DataBundle, load_data
from ..distributed.sweep import sweep
from ..measure.timing import time_interleaved
from ..models import build_model
from ..probes.sharpness import sharpness_summary
from ..settings import Setting, make_setting
from ..train.finetune import OPTIMIZERS
from ..train.pretrain import get_pretrain, get_transfer
from ..train.pretrain_runs import PretrainSpec, recipe
from ..train.sam import SAM, frozen_bn
from ..transforms import get_transform, list_transforms

BASELINE = "Adam"
SAM_RHO = 0.05
"""SAM's radius in the study (CrAFT's default; SNT names neither its optimizer nor ρ)."""
EXPAND_LR_SCALE = 1 / 3
"""``expand`` arms train at a third of the recipe's lr. Under Adam every factor moves by about lr per step, so the
product moves faster than a plain weight. Pilot (vit-tiny, seed 0, 15 epochs, validation accuracy): Adam+expand
(rate 2) 79% at the recipe's lr 3e-3, 90% at 1e-3 (rate 4: 29% and 91%); plain Adam 90.5% at 3e-3, 88% at 1e-3.
resnet-tiny (6 epochs): 96-97% with either lr."""
TRANSFER_EPOCHS = 8


def snt_arms(model: str, transforms: Iterable[str] | None = None, sam_rho: float = SAM_RHO) -> dict[str, dict]:
    """Arm label -> :class:`PretrainSpec` keywords: ``Adam``, ``SAM``, and each transform that applies to `model`
    alone and ``+SAM`` (default: every registered transform). All with Adam and the zoo's pretraining recipe."""
    arms: dict[str, dict[str, Any]] = {BASELINE: {}, "SAM": {"sam_rho": sam_rho}}
    net = build_model(model)
    for name in list_transforms() if transforms is None else transforms:
        t = get_transform(name)
        if not t.targets(net):
            continue
        kw: dict[str, Any] = {"transform": t.spec}
        if t.name == "expand":
            kw["lr"] = recipe(model, "adam")["lr"] * EXPAND_LR_SCALE
        arms[t.spec] = kw
        arms[f"{t.spec}+SAM"] = {**kw, "sam_rho": sam_rho}
    return arms


def study_settings(model: str, sparsities: Iterable[float] = (0.5, 0.7), patterns: Iterable[str] = ("2:4",),
                   bits: Iterable[tuple[int, int]] = ((8, 8), (6, 6), (4, 8), (4, 4))) -> list[Setting]:
    """FP32, magnitude and Wanda pruning, N:M and W/A bits. Models with BatchNorm get it re-estimated after pruning
    and after quantization (``+BN``, one protocol: without, resnet-tiny is at chance after 50% pruning, and stale
    statistics explained most quantization "gains")."""
    bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in build_model(model).modules())
    grid = [make_setting("none")]
    for method in ("magnitude", "wanda"):
        grid += [make_setting(method, s, recalibrate_bn=bn) for s in sparsities]
        grid += [make_setting(p, nm_score=method, recalibrate_bn=bn) for p in patterns]
    return grid + [make_setting("none", 0.0, w, a, recalibrate_bn=bn) for w, a in bits]


def family(setting: str) -> str:
    """``pruning`` / ``quantization`` / ``fp`` of a setting label."""
    return "fp" if setting == "FP32" else "quantization" if setting.startswith("W") else "pruning"


def run_study(model: str, seeds: Iterable[int] = (0, 1, 2), arms: Mapping[str, dict] | None = None,
              settings: Iterable[Setting | str] | None = None, target: str = "digits",
              transfer_epochs: int = TRANSFER_EPOCHS, sharpness: bool = True, progress: bool = False,
              log: Any = None) -> dict[str, pd.DataFrame]:
    """Pretrain (cached) every arm × seed of `model`, fine-tune each on `target` (cached), sweep and probe both.

    Returns ``{"accuracy", "sharpness", "runs"}``: ``accuracy`` has one row per (stage, arm, seed, setting), stage
    ``source`` (the pretrained model on the source task's test split: SNT's claim is about it) or ``target``
    (after fine-tuning); ``sharpness`` one row per (stage, arm, seed) with :func:`sharpness_summary`'s numbers on
    the stage's probe batch (128 training images); ``runs`` one row per (arm, seed): source test accuracy,
    pretraining seconds per step, checkpoint folders.
    """
    arms = snt_arms(model) if arms is None else arms
    settings = study_settings(model) if settings is None else list(settings)
    tgt = load_data(target, model=build_model(model))
    acc, sharp, runs = [], [], []
    for seed in seeds:
        src = load_data("mnist5k", model=build_model(model), seed=seed)  # the pretraining split of this seed
        for arm, kw in arms.items():
            spec = PretrainSpec(model, optimizer="adam", seed=seed, **kw)
            t0 = time.perf_counter()
            pre_path = get_pretrain(spec, progress=progress)
            ft_path = get_transfer(spec, target, epochs=transfer_epochs, progress=progress)
            pre, ft = load_checkpoint(pre_path), load_checkpoint(ft_path)
            metrics = pre.craftlab_meta["metrics"]
            runs.append({"model": model, "arm": arm, "seed": seed, "label": spec.label,
                         "source_accuracy": metrics["test_accuracy"], "time_per_step_s": metrics["time_per_step_s"],
                         "pretrain_time_s": metrics["train_time_s"],
                         "target_accuracy": ft.craftlab_meta["metrics"]["test_accuracy"],
                         "pretrain_path": str(pre_path), "finetune_path": str(ft_path)})
            for stage, net, data in (("source", pre, src), ("target", ft, tgt)):
                df = sweep({arm: net}, data, settings, progress=False)
                acc.append(df.assign(model=model, stage=stage, arm=arm, seed=seed,
                                     family=df["setting"].map(family)))
                if sharpness:
                    s = sharpness_summary(net, data.probe_batches(128))
                    sharp.append({"model": model, "stage": stage, "arm": arm, "seed": seed,
                                  **{k: s[k] for k in ("loss", "lambda_max", "trace", "trace_stderr",
                                                       "eps_sharpness")}})
            if log is not None:
                log(f"{model} seed {seed} {arm}: source {metrics['test_accuracy']:.3f}, target "
                    f"{runs[-1]['target_accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)")
    return {"accuracy": pd.concat(acc, ignore_index=True), "sharpness": pd.DataFrame(sharp),
            "runs": pd.DataFrame(runs)}


def paired_families(acc: pd.DataFrame, baseline: str = BASELINE, alpha: float = 0.05) -> pd.DataFrame:
    """Every arm vs `baseline`, paired by seed, per (model, stage, family): a :func:`compare_arms` table (compressed
    accuracy, treatment − baseline; Holm across the family's settings) with columns ``model, stage, family, arm``
    added, and the family's :func:`claim_verdict` status in ``verdict``."""
    out = []
    for (model, stage, fam), part in acc[acc["family"] != "fp"].groupby(["model", "stage", "family"], sort=False):
        for arm in dict.fromkeys(part["arm"]):
            if arm == baseline:
                continue
            table = compare_arms(part, baseline, arm, alpha=alpha)
            out.append(table.assign(model=model, stage=stage, family=fam, arm=arm,
                                    verdict=claim_verdict(table).status))
    return pd.concat(out, ignore_index=True)


def family_verdict(acc: pd.DataFrame, model: str, stage: str, fam: str, arm: str, claim: str,
                   baseline: str = BASELINE) -> Any:
    """:func:`claim_verdict` of one family (numbers in percentage points)."""
    part = acc[(acc["model"] == model) & (acc["stage"] == stage) & (acc["family"] == fam)]
    return claim_verdict(compare_arms(part, baseline, arm), claim=claim, scale=100, unit=" pp")


def step_times(model: str, arms: Mapping[str, dict], data: DataBundle, reps: int = 12, warmup: int = 2,
               batch_size: int = 64) -> pd.Series:
    """Median seconds per training step of each arm (its transform's training form, Adam or SAM(Adam)), the arms
    interleaved step by step on one batch so that the machine's load hits them alike
    (:func:`craftlab.measure.timing.time_interleaved`, threads by THE policy). Index: arm labels."""
    x, y = data.probe_batches(batch_size)[0]
    base = build_model(model, num_classes=data.num_classes)
    setups = {}
    for arm, kw in arms.items():
        net = base if kw.get("transform") is None else get_transform(kw["transform"]).apply(base)
        net = copy.deepcopy(net).train()
        opt_cls, lr, extra = OPTIMIZERS["adam"]
        params = [p for p in net.parameters() if p.requires_grad]
        rho = kw.get("sam_rho", 0.0)
        opt = SAM(params, opt_cls, rho=rho, model=net, lr=lr, **extra) if rho else opt_cls(params, lr=lr, **extra)
        setups[arm] = (net, opt, rho)

    def step(net: nn.Module, opt: Any, rho: float) -> None:
        F.cross_entropy(net(x), y).backward()
        if rho:
            opt.first_step(zero_grad=True)
            with frozen_bn(net):
                F.cross_entropy(net(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)

    fns = {arm: functools.partial(step, *setup) for arm, setup in setups.items()}
    return pd.Series(time_interleaved(fns, reps=reps, warmup=warmup, model=base).median(), name="seconds_per_step")


CLAIMED_PP = {"pruning": 2.0, "quantization": 5.4}
"""SNT's abstract: "up to 2% accuracy improvement on weight pruning and 5.4% accuracy improvement on quantization"
over the Adam baseline (percentage points of accuracy after compression)."""


def claim_table(acc: pd.DataFrame, baseline: str = BASELINE, alpha: float = 0.05) -> pd.DataFrame:
    """One row per (model, stage, family, arm): the family's verdict on "the arm beats Adam after compression"
    (:func:`claim_verdict` of a :func:`compare_arms` table: paired t by seed, Holm across the family's settings),
    settings with a significant gain / harm, the largest mean gain (pp, with its setting and whether it is
    significant) and SNT's claimed "up to" gain for the family."""
    rows = []
    for (model, stage, fam, arm), t in paired_families(acc, baseline, alpha).groupby(
            ["model", "stage", "family", "arm"], sort=False):
        best = t.loc[t["mean_diff"].idxmax()]
        rows.append({"model": model, "stage": stage, "family": fam, "arm": arm, "verdict": t["verdict"].iloc[0],
                     "settings": len(t), "gains": int((t["significant"] & (t["direction"] == "gain")).sum()),
                     "harms": int((t["significant"] & (t["direction"] == "harm")).sum()),
                     "best_setting": best["setting"], "best_gain_pp": 100 * best["mean_diff"],
                     "best_significant": bool(best["significant"]), "claimed_pp": CLAIMED_PP[fam]})
    return pd.DataFrame(rows)


def claim_lines(table: pd.DataFrame, stage: str = "source") -> list[str]:
    """Per arm, in words, with one rule for every arm: a family (pruning, quantization) holds only when the arm
    has a supporting verdict on **every** model of the study (an arm not run on a model does not hold there), and
    only significant gains are quoted. These are exploratory families, each Holm-corrected alone; the
    pre-registered tests of SNT's claim are the claims ledger's primary endpoints (``snt-resnet``,
    ``snt-resnet-quant``)."""
    part = table[table["stage"] == stage]
    models = list(dict.fromkeys(part["model"]))
    lines = []
    for arm, t in part.groupby("arm", sort=False):
        held = {}
        for fam in dict.fromkeys(part["family"]):
            mine = t[t["family"] == fam]
            held[fam] = (set(mine["model"]) == set(models)
                         and bool(mine["verdict"].isin(["supports", "partly supports"]).all()))
        missing = [m for m in models if m not in set(t["model"])]
        sizes = "; ".join(f"{r.model} {r.family}: {r.verdict}"
                          + (f", significant gain up to {r.best_gain_pp:+.1f} pp at {r.best_setting}"
                             if r.best_significant else "")
                          + f" (claimed up to +{r.claimed_pp:g})" for r in t.itertuples())
        verdict = ("REPRODUCES the claim" if all(held.values()) else
                   "PARTLY reproduces it" if any(held.values()) else "does NOT reproduce it")
        parts = ", ".join(f"{fam}: {'holds' if h else 'no'}" for fam, h in held.items())
        note = f" Not run on {', '.join(missing)}: those families cannot hold." if missing else ""
        lines.append(f"{arm} -> {verdict} ({parts}). {sizes}.{note}")
    n_fam = int(part.groupby(["arm", "model", "family"]).ngroups)
    lines.append(f"Exploratory: {n_fam} families, each corrected alone (no correction across them); the "
                 "pre-registered tests are the claims ledger's snt-resnet and snt-resnet-quant rows.")
    return lines


QUANT_BN_CANDIDATES = ("W8A8 +BN", "W6A6 +BN", "W4A8 +BN", "W4A4 +BN")
"""The quantization settings (BatchNorm re-estimated after quantizing) the ledger's ``snt-resnet-quant`` endpoint
rule chooses from."""


def pretrained_correct(model: str, arm: Mapping[str, Any], seed: int, setting: Setting | str) -> Any:
    """Per-image correctness (a bool array) of the cached pretraining run ``PretrainSpec(model, seed=seed, **arm)``
    compressed with `setting` (``"FP32"``: as it is), on its seed's mnist5k test split, calibrated on that split's
    calibration images (what :func:`run_study` scores as ``source``, image by image).

    Example::

        ok = pretrained_correct("resnet-tiny", {"transform": "repvgg"}, 0, "W4A4 +BN")
    """
    import numpy as np

    from ..compression.pipeline import compress
    from ..settings import parse_setting

    s = parse_setting(setting)
    data = load_data("mnist5k", model=build_model(model), seed=seed)
    net = load_checkpoint(get_pretrain(PretrainSpec(model, optimizer="adam", seed=seed, **dict(arm)),
                                       progress=False)).eval()
    q = compress(net, setting=s, calib=data.calib, seed=seed).eval() if s.label() != "FP32" else net
    with torch.no_grad():
        return np.concatenate([(q(x).argmax(1) == y).numpy() for x, y in data.test])


def endpoint_by_loss(pilot: pd.DataFrame, candidates: Iterable[str] = QUANT_BN_CANDIDATES) -> str:
    """The candidate setting where the baseline loses the most accuracy from FP32, mean over the pilot's seeds.

    `pilot`: columns ``seed``, ``setting`` (``FP32`` and the candidates) and ``accuracy`` (the baseline arm only).
    Ties go to the first candidate.

    >>> t = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1], "setting": ["FP32", "W8A8 +BN", "W4A4 +BN"] * 2,
    ...                   "accuracy": [0.9, 0.89, 0.5, 0.9, 0.9, 0.6]})
    >>> endpoint_by_loss(t, ["W8A8 +BN", "W4A4 +BN"])
    'W4A4 +BN'
    """
    w = pilot.pivot_table(index="seed", columns="setting", values="accuracy")
    cands = list(candidates)
    missing = [c for c in ["FP32", *cands] if c not in w.columns]
    if missing:
        raise ValueError(f"the pilot table lacks the settings {missing}")
    loss = {c: float((w["FP32"] - w[c]).mean()) for c in cands}
    return max(cands, key=lambda c: (loss[c], -cands.index(c)))
