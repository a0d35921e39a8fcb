"""The composition study: fine-tuning, compression, BatchNorm re-estimation and compensation in one pipeline.

Each paper measures its method alone. :class:`Pipeline` names every step of a deployment pipeline and
whether it is on; :func:`compose` runs a design over pipelines × seeds from **cached** fine-tuning runs
(``craftlab.get_run``: the AdamW and SAM ρ=0.05 twins the claims ledger already made) and returns a long
table, one row per pipeline × seed, that :mod:`craftlab.analysis.factorial` reads (main effects, two-way
interactions, the additivity test).

The steps (levels):

- **pretraining** ``adam`` (default): the zoo's pretrained checkpoint, which every cached fine-tuning run starts
  from; or the SNT factor, ``snt-adam`` / ``snt-repvgg``: the SNT study's per-seed pretraining runs on mnist5k
  (:class:`~craftlab.train.pretrain_runs.PretrainSpec`, Adam, with or without the RepVGG-style stand-in — the
  checkpoints the ledger's SNT rows score), each fine-tuned on digits with the same 8-epoch recipe
  (:func:`~craftlab.train.pretrain.get_transfer`, AdamW or SAM ρ = 0.05). The two families are not mixed in one
  design (``design="snt"`` crosses the SNT levels with the other steps);
- **fine-tuning** ``adamw`` or ``sam`` (CrAFT, ρ = 0.05);
- **compression** one setting per architecture, the claims ledger's primary endpoint where compensation has
  something to fix (:data:`ENDPOINT_CLAIMS`: vit-tiny ``W3A3 repq``, resnet-tiny ``W4A4``); any other
  setting label may be given (``wanda 70%``), ``None`` is the uncompressed model;
- **BN re-estimation** (CNNs only) after the whole compression, quantizers on (the ledger's protocol);
- **compensation** ``None``, ``qwt`` or ``qwt-v2``, fitted after the rest;
- **supernet** pick at a BitOPs budget (ViTs; design ``supernet``): instead of the fixed quantization setting, a
  mixed-precision supernet trained on the fine-tuned run and the search's pick at 5 % of the FP32 BitOPs
  (:mod:`craftlab.studies.compose_supernet`: the supernet claim's budget, the supernet benchmark's pick).

Each cell is ``compress(model, setting=..., calib=data.calib, seed=seed)`` on the cached checkpoint and the
per-image accuracy on ``data.test``: exactly what ``benchmarks/bench_claims.py`` computes for its arms, so a
step alone reproduces the ledger's single-method numbers. Results are cached as JSON under
``$CRAFTLAB_HOME/compose`` (a rerun is a lookup).

Example::

    table = craftlab.compose("resnet-tiny", design="fractional", seeds=3)
    table.groupby("label")["accuracy"].mean()
"""

from __future__ import annotations

import functools
import itertools
import json
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

from .. import cache
from ..analysis.ledger import claim

__all__ = ["DESIGNS", "ENDPOINT_CLAIMS", "Pipeline", "compose", "design_pipelines", "endpoint_setting", "read_study"]

DESIGNS = ("full", "fractional", "snt", "supernet")
FINETUNES = {"adamw": "AdamW", "sam": "SAM ρ=0.05"}
COMPENSATIONS = {None: "", "qwt": "QwT", "qwt-v2": "QwT-v2"}
PRETRAINS = ("adam", "snt-adam", "snt-repvgg")
"""``adam``: the zoo's checkpoint; ``snt-*``: the SNT study's per-seed pretraining (Adam, or the repvgg stand-in)."""
ENDPOINT_CLAIMS = {"vit-tiny": "qwt-vit", "resnet-tiny": "qwt-resnet"}
"""Architecture → the ledger claim whose primary endpoint fixes the compression setting of the study."""
DEFAULT_BUDGET = 300
_VERSION = 1


def endpoint_setting(model: str) -> str:
    """The study's compression setting for `model`: the ledger's primary endpoint (ValueError otherwise).

    >>> endpoint_setting("resnet-tiny")
    'W4A4'
    """
    if model not in ENDPOINT_CLAIMS:
        raise ValueError(f"no primary endpoint for {model!r}: the study's models are {sorted(ENDPOINT_CLAIMS)} "
                         "(or pass compression= explicitly)")
    return claim(ENDPOINT_CLAIMS[model]).setting


@functools.cache
def _is_cnn(model: str) -> bool:
    """True when `model` has BatchNorm layers (what BN re-estimation acts on)."""
    import torch.nn as nn

    from ..models import build_model

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build_model(model).modules())


@dataclass(frozen=True)
class Pipeline:
    """One deployment pipeline: each step and whether it is on.

    >>> Pipeline("resnet-tiny", finetune="sam", compression="W4A4", bn=True, compensation="qwt-v2").label
    'SAM ρ=0.05 → W4A4 → +BN → QwT-v2'
    """

    model: str
    finetune: str = "adamw"
    compression: str | None = None
    bn: bool = False
    compensation: str | None = None
    pretrain: str = "adam"
    supernet: bool = False
    bn_last: bool = False
    """Re-estimate BN *after* the compensation (the ledger's protocol, the default, re-estimates before it)."""

    @property
    def label(self) -> str:
        parts = ([] if self.pretrain == "adam" else [f"pretrain {self.pretrain}"]) + [FINETUNES.get(self.finetune,
                                                                                                   self.finetune)]
        if self.supernet:
            from .compose_supernet import SUPERNET_BUDGET

            return " → ".join(parts + [f"supernet pick ≤ {SUPERNET_BUDGET}"])
        parts.append(self.compression or "uncompressed")
        if self.bn and not self.bn_last:
            parts.append("+BN")
        if self.compensation:
            parts.append(COMPENSATIONS.get(self.compensation, str(self.compensation)))
        if self.bn and self.bn_last:
            parts.append("+BN")
        return " → ".join(parts)

    @property
    def steps(self) -> dict[str, Any]:
        """The factors as table columns (``sam``, ``bn``, ``compensation``: ``none``/``qwt``/``qwt-v2``)."""
        return {"sam": self.finetune == "sam", "bn": self.bn, "compensation": self.compensation or "none",
                "bn_last": self.bn_last, "snt": self.pretrain == "snt-repvgg", "pretrain": self.pretrain,
                "supernet": self.supernet}

    def validate(self) -> Pipeline:
        """Self when the pipeline means something; ValueError naming the step and why otherwise."""
        if self.finetune not in FINETUNES:
            raise ValueError(f"fine-tuning step {self.finetune!r}: choose one of {list(FINETUNES)}")
        if self.compensation not in COMPENSATIONS:
            raise ValueError(f"compensation step {self.compensation!r}: choose one of {list(COMPENSATIONS)}")
        cnn = _is_cnn(self.model)
        if self.pretrain not in PRETRAINS:
            raise ValueError(f"pretraining step {self.pretrain!r}: choose one of {list(PRETRAINS)} ('adam': the zoo's "
                             "checkpoint; 'snt-adam' / 'snt-repvgg': the SNT study's per-seed pretraining)")
        if self.pretrain == "snt-repvgg" and not cnn:
            raise ValueError(f"pretraining step snt-repvgg on {self.model}: the RepVGG-style stand-in applies to "
                             "convolutional models only")
        if self.supernet and cnn:
            raise ValueError(f"supernet step on {self.model}: the study's budget, 5 % of FP32 BitOPs, is out of a "
                             "CNN subnet's reach (its FP32 stem and head cap the reduction; the supernet benchmark "
                             "searches CNNs at larger budgets): the step is run on ViTs")
        if self.supernet and (self.compression or self.compensation or self.pretrain != "adam"):
            raise ValueError("supernet step with a compression, a compensation or an SNT pretraining: the supernet "
                             "pick is the pipeline's compression (it replaces the fixed PTQ setting; a compensation "
                             "of a subnet is not implemented), after the zoo checkpoint's fine-tuning")
        if self.bn and not cnn:
            raise ValueError(f"BN re-estimation on {self.model}: a ViT has no BatchNorm to re-estimate "
                             "(LayerNorm normalizes each token by itself)")
        if self.compression is None and self.compensation:
            raise ValueError(f"compensation {COMPENSATIONS[self.compensation]} on an uncompressed model: "
                             "there is no compression error to compensate")
        if self.compression is None and self.bn:
            raise ValueError("BN re-estimation on an uncompressed model: its statistics are already those of "
                             "its weights (turn on a compression step)")
        if self.bn_last and not (self.bn and self.compensation):
            raise ValueError("bn_last re-estimates BN after the compensation: it needs bn=True and a compensation")
        s = self.setting()
        if self.compensation and self.bn and not s.quantizes:
            raise ValueError(f"compensation {COMPENSATIONS[self.compensation]} after BN re-estimation of a pruned "
                             "model: BN re-estimation already corrects the per-channel statistics a compensation "
                             "fits (quantize too, or turn one of them off)")
        return self

    def setting(self) -> Any:
        """The compression :class:`~craftlab.settings.Setting` of the pipeline (identity when uncompressed)."""
        from ..settings import parse_setting

        s = parse_setting(self.compression or "FP32")
        return replace(s, recalibrate_bn=self.bn and not self.bn_last, compensation=self.compensation)

    def key(self, seed: int) -> str:
        return json.dumps({**asdict(self), "seed": int(seed), "v": _VERSION}, sort_keys=True)


def design_pipelines(model: str, design: str = "full", compression: str | None = None) -> list[Pipeline]:
    """The pipelines of a design on `model` (compression: the ledger's endpoint unless given).

    ``full``: every combination of fine-tuning {AdamW, SAM} × [CNNs: BN re-estimation {off, on}] ×
    compensation {none, QwT, QwT-v2}; on CNNs also the other order (BN re-estimated after the compensation,
    ``bn_last``), outside the factorial. ``fractional``: the all-off compressed model, each step alone (each
    compensation level alone) and the full pipeline (every step on, QwT-v2): main effects against the all-off
    model and the additivity test, no separate two-way interactions. ``snt`` (CNNs: the stand-in is RepVGG-style):
    pretraining {snt-adam, snt-repvgg} × fine-tuning {AdamW, SAM} × BN {off, on} × compensation {none, QwT-v2},
    a fraction of the full design (QwT and the other BN order left out) that holds the SNT factor's main effect
    and its interactions with CrAFT, BN re-estimation and QwT-v2. ``supernet`` (ViTs): fine-tuning {AdamW, SAM} ×
    the last step {the endpoint's PTQ, PTQ + QwT-v2, the supernet pick at 5 % of FP32 BitOPs}: the supernet step's
    main effect against the fixed PTQ setting and its interaction with SAM (the PTQ cells are the full design's).

    >>> len(design_pipelines("vit-tiny", "full", "W3A3 repq"))
    6
    """
    if design not in DESIGNS:
        raise ValueError(f"design {design!r}: choose one of {list(DESIGNS)}")
    comp = compression if compression is not None else endpoint_setting(model)
    bns = (False, True) if _is_cnn(model) else (False,)
    if design == "snt":
        if len(bns) < 2:
            raise ValueError(f"design 'snt' on {model}: the SNT stand-in (RepVGG-style branches) applies to "
                             "convolutional models only")
        out = [Pipeline(model, f, comp, b, c, pretrain=pre) for pre, f, b, c in
               itertools.product(("snt-adam", "snt-repvgg"), FINETUNES, bns, (None, "qwt-v2"))]
    elif design == "supernet":
        if len(bns) > 1:
            raise ValueError(f"design 'supernet' on {model}: the supernet step is run on ViTs (a CNN subnet cannot "
                             "reach the study's 5 % budget)")
        out = [Pipeline(model, f, comp, compensation=c) for f in FINETUNES for c in (None, "qwt-v2")]
        out += [Pipeline(model, f, supernet=True) for f in FINETUNES]
    elif design == "full":
        out = [Pipeline(model, f, comp, b, c) for f, b, c in itertools.product(FINETUNES, bns, COMPENSATIONS)]
        if len(bns) > 1:  # the order of BN re-estimation and compensation: BN re-estimated after compensating
            out += [Pipeline(model, f, comp, True, c, bn_last=True) for f in FINETUNES for c in COMPENSATIONS if c]
    else:
        base = Pipeline(model, "adamw", comp)
        out = [base, replace(base, finetune="sam")] + ([replace(base, bn=True)] if len(bns) > 1 else [])
        out += [replace(base, compensation=c) for c in COMPENSATIONS if c]
        out.append(Pipeline(model, "sam", comp, len(bns) > 1, "qwt-v2"))
    return [p.validate() for p in out]


_DATA: dict[str, Any] = {}


def _data(model: str) -> Any:
    from ..data import load_data
    from ..models import build_model

    if model not in _DATA:
        _DATA[model] = load_data("digits", model=build_model(model))
    return _DATA[model]


@functools.cache
def _float_attention_bitops(model: str) -> float:
    """BitOPs of `model`'s attention matmuls on one test image, run in float (32 x 32): what a fixed PTQ setting
    leaves unquantized (0 for a CNN). ``model_stats`` counts Conv2d/Linear layers only."""
    from ..models import build_model
    from .supernet import float_attention_macs

    x = next(iter(_data(model).test))[0][:1]
    return float(float_attention_macs(build_model(model), x)) * 32 * 32


def _train_seconds(meta: dict[str, Any]) -> float:
    return float(sum(h.get("time_s", 0.0) for h in meta.get("history", []) if isinstance(h, dict)))


def _run_path(p: Pipeline, seed: int) -> tuple[Any, str]:
    """The cached fine-tuning run of `p` at `seed` and its key: a zoo run (``get_run``), or for the SNT levels the
    SNT study's pretraining of that seed fine-tuned on digits (``get_transfer``, 8 epochs, AdamW or SAM)."""
    rho = 0.05 if p.finetune == "sam" else 0.0
    if p.pretrain == "adam":
        from ..train.runs import RunSpec, get_run

        spec = RunSpec(model=p.model, sam_rho=rho, seed=int(seed))
        return get_run(spec, progress=False), spec.key
    from ..train.pretrain import get_transfer
    from ..train.pretrain_runs import PretrainSpec
    from .snt import snt_arms

    arm = snt_arms(p.model)["Adam" if p.pretrain == "snt-adam" else "repvgg"]
    path = get_transfer(PretrainSpec(p.model, optimizer="adam", seed=int(seed), **arm), "digits", epochs=8,
                        sam_rho=rho, progress=False)
    return path, f"{path.parent.parent.name}/{path.name}"


def _cell(p: Pipeline, seed: int) -> dict[str, Any]:
    """Compress the cached run of `p` at `seed` and evaluate it on the test images (what bench_claims does)."""
    import torch

    from ..checkpoint import load_checkpoint, read_meta
    from ..compression.pipeline import compress
    from ..compression.quant import model_stats

    if p.supernet:
        from .compose_supernet import supernet_cell

        return supernet_cell(p.model, 0.05 if p.finetune == "sam" else 0.0, seed, _data(p.model))
    path, run_key = _run_path(p, seed)
    model, data = load_checkpoint(path).eval(), _data(p.model)
    s = p.setting()
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the study measures the BN + QwT-v2 combination on purpose (compress warns)
        warnings.filterwarnings("ignore", message="BatchNorm re-estimation and QwT-v2", category=UserWarning)
        q = compress(model, setting=s, calib=data.calib, seed=int(seed)) if p.compression else model
    if p.bn_last:
        from ..compression.bn import recalibrate_bn

        q = recalibrate_bn(q, data.calib)
    calib_s = time.perf_counter() - t0 if p.compression else 0.0
    q.eval()
    with torch.no_grad():
        correct = torch.cat([(q(x).argmax(1) == y) for x, y in data.test]).numpy()
        x = next(iter(data.test))[0][:1]
    stats = model_stats(q, x)
    info = (getattr(q, "craftlab_compression", {}) or {}).get("compensation") or {}
    return {"accuracy": float(correct.mean()), "n_images": int(correct.size), "size_mb": float(stats["size_mb"]),
            "bitops": float(stats["bitops"]), "params": int(stats["params"]),
            "params_added": int(info.get("params_added", 0) or 0), "train_s": _train_seconds(read_meta(path)),
            "calib_s": float(calib_s), "run_key": run_key, "setting": s.label() if p.compression else "FP32"}


def _cached_cell(p: Pipeline, seed: int, use_cache: bool) -> dict[str, Any]:
    f = cache.home() / "compose" / (cache.fingerprint(p.key(seed))[:20] + ".json")
    if use_cache and f.is_file():
        return json.loads(f.read_text())["row"]
    row = _cell(p, seed)
    cache.atomic_write_json(f, {"key": p.key(seed), "row": row})
    return row


def compose(model: str = "vit-tiny", design: str = "full", seeds: int | list[int] = 5, *,
            compression: str | None = None, pipelines: list[Pipeline] | None = None,
            budget: int = DEFAULT_BUDGET, use_cache: bool = True, progress: bool = False) -> Any:
    """Run a composition design over cached runs: one row per pipeline × seed (a pandas DataFrame).

    Args:
        model: a zoo model of the study (``vit-tiny``, ``resnet-tiny``).
        design: ``"full"`` (factorial) or ``"fractional"`` (each step alone + the full pipeline), see
            :func:`design_pipelines`; ignored when `pipelines` is given.
        seeds: a count (seeds 0..n-1) or a list of fine-tuning seeds (paired: every pipeline on every seed).
        compression: the compression setting label (default: the ledger's endpoint for `model`).
        budget: the most compress + evaluate runs a call may make (pipelines × seeds); a larger design says
            its run count and asks for a fractional design or fewer seeds.
        use_cache: reuse cells computed before (``$CRAFTLAB_HOME/compose``).

    Columns: ``model, label, sam, bn, compensation, bn_last, snt, pretrain, supernet, seed, accuracy, n_images,
    size_mb, bitops, params, params_added, train_s, calib_s, run_key, setting, bitops_total``. ``bitops``: the
    Conv2d/Linear layers (``model_stats``); ``bitops_total`` adds the attention matmuls as the model runs them
    (float after a fixed PTQ setting, at the subnet's activation bits after the supernet step).

    Example::

        t = compose("resnet-tiny", design="fractional", seeds=3)
    """
    import pandas as pd

    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list) or min(seed_list) < 0:
        raise ValueError(f"seeds must be a positive count or distinct non-negative seeds, got {seeds!r}")
    if pipelines is None:
        pipes = design_pipelines(model, design, compression)
    else:
        pipes = [p.validate() for p in pipelines]
        if any(p.model != model for p in pipes):
            raise ValueError(f"every pipeline must be on model {model!r}")
    runs = len(pipes) * len(seed_list)
    if runs > budget:
        frac = len(design_pipelines(model, "fractional", compression)) * len(seed_list)
        raise ValueError(f"design {design!r} on {model} is {len(pipes)} pipelines × {len(seed_list)} seeds = {runs} "
                         f"compress+evaluate runs, more than the budget of {budget}: use --design fractional "
                         f"({frac} runs), fewer seeds or fewer levels (or raise the budget)")
    rows = []
    for seed in seed_list:
        for p in pipes:
            t0 = time.perf_counter()
            row = _cached_cell(p, seed, use_cache)
            if "bitops_total" not in row:  # a fixed-setting cell: its attention matmuls run in float
                row = {**row, "bitops_total": row["bitops"] + _float_attention_bitops(model)}
            rows.append({"model": model, "label": p.label, **p.steps, "seed": seed, **row})
            if progress:
                print(f"  {p.label} seed {seed}: {100 * row['accuracy']:.1f} % ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
    return pd.DataFrame(rows)


def read_study(path: Any = None, design: str = "full") -> Any:
    """The composition study's table of `design` (the checkout's ``benchmarks/results/compose.csv`` for the full
    design, ``compose_<design>.csv`` for the others; or `path`; the benchmark writes them), or None when there is
    none: then compute with :func:`compose`.

    >>> read_study(design="half")
    Traceback (most recent call last):
    ...
    ValueError: design 'half': choose one of ['full', 'fractional', 'snt', 'supernet']
    """
    import pandas as pd

    from ..analysis.ledger import results_file

    if design not in DESIGNS:
        raise ValueError(f"design {design!r}: choose one of {list(DESIGNS)}")
    name = "compose.csv" if design == "full" else f"compose_{design}.csv"
    where = results_file(name, path, "CRAFTLAB_COMPOSE_TABLE" if design == "full" else None)
    return None if where is None else pd.read_csv(where)
