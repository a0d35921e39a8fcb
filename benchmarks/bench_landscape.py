"""Benchmark: a 21x21 filter-normalized loss plane on the zoo models.

Compares, on one 128-image ``digits`` validation batch (median of ``--repeats`` runs, run orders rotated):

* floor: ``steps**2`` plain eval forward passes of the batch under ``torch.inference_mode()``;
* craftlab: ``craftlab.landscape.plane`` (in-place parameter writes + forward + loss/accuracy);
* loss_landscapes: ``loss_landscapes.random_plane(..., normalization="filter", deepcopy_model=True)``.

and where craftlab's time goes (forward incl. loss/accuracy vs parameter writes), from ``meta["timing"]``.

Usage::

    python benchmarks/bench_landscape.py [--threads 1] [--repeats 3] [--steps 21] [--models vit-tiny resnet-tiny]

Prints a markdown table and writes ``benchmarks/results/landscape.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "landscape.json"


def _model(name: str) -> tuple[nn.Module, str]:
    """The zoo model: pretrained weights if already on disk (never pretrains), else a fresh init.

    A fresh init has all-zero biases/norm shifts, on which ``loss_landscapes``' filter normalization divides
    by zero (``ZeroDivisionError``); those are jittered with N(0, 0.01) so the baseline can run. Timing does
    not depend on the values.
    """
    from craftlab import create_model
    from craftlab.models import zoo_checkpoint_dir

    if zoo_checkpoint_dir(name) is not None:
        return create_model(name, num_classes=10, pretrained=True), "pretrained"
    model = create_model(name, num_classes=10, pretrained=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1 and not p.any():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model, "random init (zero 1-D params jittered)"


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": time.perf_counter() - start[0], "cpu_s": time.process_time() - start[1]}


def floor(model: nn.Module, x: torch.Tensor, n: int) -> tuple[dict[str, float], dict]:
    """Wall and process-CPU seconds for `n` plain eval forward passes under inference_mode."""
    model.eval()
    with torch.inference_mode():
        start = _clock()
        for _ in range(n):
            model(x)
        return _since(start), {}


def run_craftlab(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> tuple[dict, dict]:
    from craftlab import landscape

    start = _clock()
    res = landscape.plane(model, batch, steps=steps, distance=1.0, normalization="filter", seed=0)
    return _since(start), res.meta["timing"]


def run_loss_landscapes(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> tuple[dict, dict]:
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    class TimedLoss(Loss):
        forward_s = 0.0

        def __call__(self, model_wrapper: Any) -> float:
            t0 = time.perf_counter()
            out = super().__call__(model_wrapper)
            TimedLoss.forward_s += time.perf_counter() - t0
            return out

    TimedLoss.forward_s = 0.0
    torch.manual_seed(0)
    start = _clock()
    loss_landscapes.random_plane(model.eval(), TimedLoss(F.cross_entropy, *batch), distance=1, steps=steps,
                                 normalization="filter", deepcopy_model=True)
    took = _since(start)
    return took, {"total_s": took["wall_s"], "forward_s": TimedLoss.forward_s,
                  "other_s": took["wall_s"] - TimedLoss.forward_s}


def _median_timing(timings: list[dict]) -> dict:
    if not timings or not timings[0]:
        return {}
    keys = [k for k in timings[0] if isinstance(timings[0][k], float)]
    return {k: statistics.median(t[k] for t in timings) for k in keys}


def bench_model(name: str, batch: tuple[torch.Tensor, torch.Tensor], steps: int, repeats: int) -> dict:
    model, weights = _model(name)
    n = steps * steps
    floor(model, batch[0], 3)  # warm-up
    fns = {"floor": lambda: floor(model, batch[0], n), "craftlab": lambda: run_craftlab(model, batch, steps),
           "loss_landscapes": lambda: run_loss_landscapes(model, batch, steps)}
    runs: dict[str, list[dict]] = {k: [] for k in fns}
    timings: dict[str, list[dict]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for what in order[r % 3:] + order[:r % 3]:  # rotate so drift in machine load hits all alike
            took, timing = fns[what]()
            runs[what].append(took)
            timings[what].append(timing)
    med = {k: {c: statistics.median(t[c] for t in v) for c in ("wall_s", "cpu_s")} for k, v in runs.items()}

    def ratio(a: str, b: str) -> dict[str, float]:
        return {c: med[a][c] / med[b][c] for c in ("wall_s", "cpu_s")}

    ct = _median_timing(timings["craftlab"])
    return {
        "model": name, "weights": weights, "num_params": sum(p.numel() for p in model.parameters()),
        "points": n, "runs": runs, "median": med,
        "craftlab_over_floor": ratio("craftlab", "floor"),
        "craftlab_over_loss_landscapes": ratio("craftlab", "loss_landscapes"),
        "loss_landscapes_over_floor": ratio("loss_landscapes", "floor"),
        "floor_ms_per_forward": {c: 1e3 * med["floor"][c] / n for c in ("wall_s", "cpu_s")},
        "craftlab_timing_median": ct,
        "craftlab_non_forward_fraction": (ct["write_s"] + ct["other_s"]) / ct["total_s"],
        "loss_landscapes_timing_median": _median_timing(timings["loss_landscapes"]),
    }


def table(rows: list[dict]) -> str:
    """Markdown table; times are process CPU seconds (wall seconds in brackets)."""
    lines = ["| model | params | points | floor: plain forwards (s) | craftlab `plane` (s) | "
             "`loss_landscapes.random_plane` (s) | craftlab / floor | craftlab / loss_landscapes | "
             "craftlab time split: forward+loss / param writes / other |", "|" + "---|" * 9]
    for r in rows:
        m, t = r["median"], r["craftlab_timing_median"]
        times = [f"{m[k]['cpu_s']:.2f} ({m[k]['wall_s']:.2f})" for k in ("floor", "craftlab", "loss_landscapes")]
        ratios = [f"{r[k]['cpu_s']:.3f} ({r[k]['wall_s']:.3f})"
                  for k in ("craftlab_over_floor", "craftlab_over_loss_landscapes")]
        split = " / ".join(f"{100 * t[k] / t['total_s']:.2f}%" for k in ("forward_s", "write_s", "other_s"))
        lines.append(f"| {r['model']} | {r['num_params']:,} | {r['points']} | " + " | ".join(times + ratios)
                     + f" | {split} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit-tiny", "resnet-tiny"])
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from craftlab.data import load_data

    x, y = next(iter(load_data("digits").loader("val", batch_size=args.batch_size)))
    load_before = os.getloadavg()
    rows = [bench_model(name, (x, y), args.steps, args.repeats) for name in args.models]
    from importlib.metadata import version

    report = {
        "benchmark": "filter-normalized loss plane", "steps": args.steps, "repeats": args.repeats,
        "batch": {"dataset": "digits", "split": "val", "size": len(y), "shape": list(x.shape)},
        "environment": {"torch": torch.__version__, "loss_landscapes": version("loss-landscapes"),
                        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "results": rows, "table": table(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(report["table"])
    print("\ntimes: median process CPU seconds (wall seconds); CPU time is robust to other processes sharing "
          "the cores when --threads 1")
    print(f"threads={report['environment']['threads']}  loadavg before {load_before[0]:.2f}, "
          f"after {report['environment']['loadavg_after'][0]:.2f}  -> {args.out}")
    return report


if __name__ == "__main__":
    main()
