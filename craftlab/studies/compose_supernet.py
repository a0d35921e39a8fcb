"""The supernet step of the composition study: the search's pick at a BitOPs budget as the last step (ViTs).

The step replaces the pipeline's fixed post-training quantization: a mixed-precision supernet (per-bit LoRA, the
supernet study's main recipe, :func:`craftlab.studies.supernet.notebook_specs`) is trained on the pipeline's cached
fine-tuning run (AdamW or SAM ρ = 0.05, same seed), and the evolutionary search picks a subnet at
:data:`SUPERNET_BUDGET` of the FP32 model's BitOPs (the supernet claim's budget in the ledger) with the
benchmark's search settings and budgets, so the AdamW pick is the one ``benchmarks/bench_supernet.py`` reports
(same cache keys, same numbers). The cell is that subnet's accuracy on the test images.

Example::

    row = supernet_cell("vit-tiny", sam_rho=0.05, seed=0, data=craftlab.load_data("digits"))
    row["accuracy"], row["setting"]          # e.g. 0.96, "pick ≤ 5%: W3A4 ..."
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

__all__ = ["SUPERNET_BUDGET", "supernet_cell", "supernet_spec"]

SUPERNET_BUDGET = "5%"
"""The budget of the pick, in % of the FP32 model's BitOPs (attention matmuls included): the ledger's supernet
claim (the paper's ~95 % BitOPs reduction)."""


def supernet_spec(model: str, sam_rho: float, seed: int) -> Any:
    """The supernet of the step: the study's main supernet of `seed`, trained on the fine-tuning run with SAM
    radius `sam_rho` (0: the AdamW run, the supernet benchmark's own).

    >>> supernet_spec("vit-tiny", 0.05, 3).base_sam_rho
    0.05
    """
    from . import supernet as study

    return replace(study.notebook_specs((int(seed),))[f"per-bit/s{int(seed)}"], model=model,
                   base_sam_rho=float(sam_rho))


def supernet_cell(model: str, sam_rho: float, seed: int, data: Any) -> dict[str, Any]:
    """Train (or load) the step's supernet, pick a subnet at :data:`SUPERNET_BUDGET` and measure it on
    ``data.test``: the composition study's row fields (accuracy, sizes, times, the pick's label)."""
    from ..checkpoint import read_meta
    from ..compression.quant import model_stats
    from ..supernet import evaluate_configs, get_supernet, load_supernet
    from ..supernet.search import search_budgets
    from ..supernet.space import parse_budget
    from ..supernet.store import read_supernet_meta
    from ..train.runs import get_run
    from . import supernet as study

    spec = supernet_spec(model, sam_rho, seed)
    path = get_supernet(spec)
    sn = load_supernet(path)
    fp32 = sn.references()["FP32"]
    t0 = time.perf_counter()
    budgets = list(study.QUICK["budgets"])  # the benchmark's budgets: the search shares its evaluations across them
    if SUPERNET_BUDGET not in budgets:
        budgets.append(SUPERNET_BUDGET)
    rep = search_budgets(sn, data, budgets, seed=int(seed), **study.QUICK["search"])
    want = parse_budget(SUPERNET_BUDGET, fp32)
    result = next(r for r in rep.results if abs(r.budget - want) <= 1e-9 * want)
    cfg = result.best["config"]
    search_s = time.perf_counter() - t0
    test = evaluate_configs(sn, data, [cfg], split="test")[0]
    stats = model_stats(sn.export(cfg).eval(), next(iter(data.test))[0][:1])
    meta = read_supernet_meta(path)
    history = read_meta(get_run(spec.base_run(), progress=False)).get("history", [])
    base_s = float(sum(h.get("time_s", 0.0) for h in history if isinstance(h, dict)))  # the base run's training
    return {"accuracy": float(test["accuracy"]), "n_images": int(test["n"]), "size_mb": float(stats["size_mb"]),
            "bitops": float(stats["bitops"]), "params": int(stats["params"]),
            "params_added": 0,  # the LoRA deltas are folded into the exported subnet's quantized weights
            "train_s": base_s + float(meta.get("train_time_s", 0.0)), "calib_s": float(search_s),
            "bitops_total": float(sn.bitops(cfg)), "run_key": path.name,
            "setting": f"pick ≤ {SUPERNET_BUDGET}: {result.best['label']} "
                       f"({100 * result.best['bitops'] / fp32:.2f} % of FP32 BitOPs)"}

