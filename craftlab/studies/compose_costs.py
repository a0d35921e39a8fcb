"""What each step of a composition pipeline costs: wall time, size and BitOPs, step by step.

:func:`step_costs` runs one :class:`~craftlab.studies.compose.Pipeline` on one cached fine-tuning run as
separate, timed steps — **compression** (pruning / quantization with its calibration), **BN re-estimation**
(quantizers on), **compensation fit** (QwT / QwT-v2 against the uncompressed model), **evaluation** (the test
images) — in the pipeline's order (``bn_last``: BN after the compensation). The steps are the ones
:func:`~craftlab.compression.pipeline.compress` chains, so the final model is the composition study's cell
(same accuracy); after each step it records the model's size, BitOPs and parameters (measured outside the
timers), so each step's size/BitOPs effect is the change from the row before. ``pipeline_s`` (``.attrs``) is the
wall time of the whole chain measured around it (minus the out-of-band measurements): the steps' seconds sum to it.

:func:`cost_summary` reduces many such tables to one row per step: its median seconds and its size/BitOPs effect.

Example::

    from craftlab.studies.compose import Pipeline
    t = step_costs(Pipeline("resnet-tiny", "sam", "W4A4", bn=True, compensation="qwt"), seed=0)
    t[["step", "seconds", "size_mb", "bitops"]]
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .compose import COMPENSATIONS, Pipeline

__all__ = ["STEP_NAMES", "cost_summary", "step_costs"]

STEP_NAMES = ("compression", "BN re-estimation", "compensation fit", "evaluation")
"""The deployment steps of a pipeline, as :func:`step_costs` names them."""


def _steps(p: Pipeline) -> list[str]:
    names = ["compression"] if p.compression else []
    tail = [n for n, on in (("BN re-estimation", p.bn), ("compensation fit", bool(p.compensation))) if on]
    return names + (tail[::-1] if p.bn_last else tail) + ["evaluation"]


def step_costs(pipeline: Pipeline, seed: int = 0) -> Any:
    """Run `pipeline` on the cached fine-tuning run of `seed` step by step: one row per step (a DataFrame).

    Columns: ``model, label, seed, step, method`` (the setting, ``BN``, ``QwT``/``QwT-v2``, ``test images``),
    ``seconds, size_mb, bitops, params, params_added, accuracy`` (accuracy on the evaluation row only) and the
    uncompressed model's ``fp_size_mb, fp_bitops, fp_params``. ``.attrs["pipeline_s"]``: the chain's wall time, which
    the steps'
    seconds sum to. A pipeline that prunes *and* re-estimates BN is refused (``compress`` re-estimates after the
    pruning inside that step, so BN has no separate cost there).

    Example::

        t = step_costs(Pipeline("vit-tiny", "adamw", "W3A3 repq", compensation="qwt-v2"), seed=1)
        t.attrs["pipeline_s"], t["seconds"].sum()
    """
    import pandas as pd
    import torch

    from ..checkpoint import load_checkpoint
    from ..compression.bn import recalibrate_bn_
    from ..compression.compensate import compensate
    from ..compression.pipeline import compress, resolve
    from ..compression.quant import model_stats
    from ..train.runs import RunSpec, get_run
    from .compose import _data

    p = pipeline.validate()
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    s = p.setting()
    if p.bn and s.prunes:
        raise ValueError(f"{p.label}: with pruning, compress re-estimates BN inside the pruning step; per-step costs "
                         "are measured for pipelines whose BN re-estimation is a step of its own (quantization)")
    spec = RunSpec(model=p.model, sam_rho=0.05 if p.finetune == "sam" else 0.0, seed=int(seed))
    model, data = load_checkpoint(get_run(spec, progress=False)).eval(), _data(p.model)
    x1 = next(iter(data.test))[0][:1]
    fp = model_stats(model, x1)
    opts = {}
    if p.compensation:
        opts = resolve(replace(s, recalibrate_bn=p.bn, compensation=p.compensation),
                       calib=data.calib)["compensation_options"]
    plain = replace(s, recalibrate_bn=False, compensation=None)  # the compression step alone
    rows: list[dict[str, Any]] = []
    cur, added, side_s, acc = model, 0, 0.0, float("nan")
    start = time.perf_counter()
    for step in _steps(p):
        t0 = time.perf_counter()
        if step == "compression":
            cur = compress(model, setting=plain, calib=data.calib, seed=int(seed))
        elif step == "BN re-estimation":
            recalibrate_bn_(cur, data.calib)  # cur is this call's own compressed copy
        elif step == "compensation fit":
            res = compensate(cur, model, data.calib, method=p.compensation, **opts)
            cur, added = res.model, int(res.summary.get("params_added", 0) or 0)
        else:
            cur.eval()
            with torch.no_grad():
                acc = float(torch.cat([(cur(x).argmax(1) == y) for x, y in data.test]).numpy().mean())
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        st = model_stats(cur, x1)
        side_s += time.perf_counter() - t1
        method = {"compression": plain.label(), "BN re-estimation": "BN", "evaluation": "test images"}.get(
            step, COMPENSATIONS.get(p.compensation))
        rows.append({"model": p.model, "label": p.label, "seed": int(seed), "step": step, "method": method,
                     "seconds": seconds,
                     "size_mb": float(st["size_mb"]), "bitops": float(st["bitops"]), "params": int(st["params"]),
                     "params_added": added, "accuracy": acc if step == "evaluation" else float("nan"),
                     "fp_size_mb": float(fp["size_mb"]), "fp_bitops": float(fp["bitops"]),
                     "fp_params": int(fp["params"])})
    out = pd.DataFrame(rows)
    out.attrs["pipeline_s"] = time.perf_counter() - start - side_s
    return out


def cost_summary(tables: list[Any]) -> Any:
    """One row per step and method (``QwT``, ``QwT-v2``) over many :func:`step_costs` tables (pipelines × seeds of
    one model): median seconds,
    runs measured, and its size/BitOPs effect (median change from the row before, i.e. what the step adds).

    Example::

        cost_summary([step_costs(p, s) for p in pipes for s in (0, 1)])
    """
    import pandas as pd

    if not tables:
        raise ValueError("no step-cost tables to summarize")
    parts = []
    for t in tables:
        d = t.copy()
        prev = d[["size_mb", "bitops", "params"]].shift(1)
        prev.iloc[0] = d.iloc[0][["fp_size_mb", "fp_bitops", "fp_params"]].to_numpy()  # the float model
        for c in ("size_mb", "bitops", "params"):
            d[f"d_{c}"] = d[c] - prev[c]
        parts.append(d)
    d = pd.concat(parts, ignore_index=True)
    g = d.groupby(["step", "method"], sort=False)
    out = g.agg(seconds=("seconds", "median"), runs=("seconds", "size"), d_size_mb=("d_size_mb", "median"),
                d_bitops=("d_bitops", "median"), d_params=("d_params", "median"), size_mb=("size_mb", "median"),
                bitops=("bitops", "median")).reset_index()
    order = {n: i for i, n in enumerate(STEP_NAMES)}
    return out.sort_values("step", key=lambda s: s.map(order)).reset_index(drop=True)
