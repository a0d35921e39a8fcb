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
    from craftlab.models import create_model, zoo_checkpoint_dir

    if zoo_checkpoint_dir(name) is not None:
        return create_model(name, num_classes=10, pretrained=True), "pretrained"
    model = create_model(name, num_classes=10, pretrained=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1 and not p.any():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model, "random init (zero 1-D params jittered)"


def floor(model: nn.Module, x: torch.Tensor, n: int) -> float:
    """Seconds for `n` plain eval forward passes under inference_mode."""
    model.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(n):
            model(x)
        return time.perf_counter() - t0


def run_craftlab(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> tuple[float, dict]:
    from craftlab import landscape

    t0 = time.perf_counter()
    res = landscape.plane(model, batch, steps=steps, distance=1.0, normalization="filter", seed=0)
    return time.perf_counter() - t0, res.meta["timing"]


def run_loss_landscapes(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> tuple[float, dict]:
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
    t0 = time.perf_counter()
    loss_landscapes.random_plane(model.eval(), TimedLoss(F.cross_entropy, *batch), distance=1, steps=steps,
                                 normalization="filter", deepcopy_model=True)
    total = time.perf_counter() - t0
    return total, {"total_s": total, "forward_s": TimedLoss.forward_s, "other_s": total - TimedLoss.forward_s}


def _median_timing(timings: list[dict]) -> dict:
    keys = [k for k in timings[0] if isinstance(timings[0][k], float)]
    return {k: statistics.median(t[k] for t in timings) for k in keys}


def bench_model(name: str, batch: tuple[torch.Tensor, torch.Tensor], steps: int, repeats: int) -> dict:
    model, weights = _model(name)
    n = steps * steps
    floor(model, batch[0], 3)  # warm-up
    runs: dict[str, list[float]] = {"floor": [], "craftlab": [], "loss_landscapes": []}
    timings: dict[str, list[dict]] = {"craftlab": [], "loss_landscapes": []}
    order = ["floor", "craftlab", "loss_landscapes"]
    for r in range(repeats):
        for what in order[r % 3:] + order[:r % 3]:  # rotate so drift in machine load hits all alike
            if what == "floor":
                runs["floor"].append(floor(model, batch[0], n))
            elif what == "craftlab":
                s, t = run_craftlab(model, batch, steps)
                runs["craftlab"].append(s)
                timings["craftlab"].append(t)
            else:
                s, t = run_loss_landscapes(model, batch, steps)
                runs["loss_landscapes"].append(s)
                timings["loss_landscapes"].append(t)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "model": name, "weights": weights, "num_params": sum(p.numel() for p in model.parameters()),
        "points": n, "runs_s": runs, "median_s": med,
        "craftlab_over_floor": med["craftlab"] / med["floor"],
        "craftlab_over_loss_landscapes": med["craftlab"] / med["loss_landscapes"],
        "loss_landscapes_over_floor": med["loss_landscapes"] / med["floor"],
        "floor_ms_per_forward": 1e3 * med["floor"] / n,
        "craftlab_timing_median": _median_timing(timings["craftlab"]),
        "loss_landscapes_timing_median": _median_timing(timings["loss_landscapes"]),
    }


def table(rows: list[dict]) -> str:
    head = ("| model | params | floor: 441 fwd (s) | craftlab `plane` (s) | craftlab / floor | "
            "`loss_landscapes.random_plane` (s) | craftlab / loss_landscapes | craftlab forward+loss (s) | "
            "craftlab param writes (s) | craftlab other (s) |")
    lines = [head.replace("441", str(rows[0]["points"]) if rows else "441"), "|" + "---|" * 10]
    for r in rows:
        m, t = r["median_s"], r["craftlab_timing_median"]
        lines.append(f"| {r['model']} | {r['num_params']:,} | {m['floor']:.2f} | {m['craftlab']:.2f} | "
                     f"{r['craftlab_over_floor']:.3f} | {m['loss_landscapes']:.2f} | "
                     f"{r['craftlab_over_loss_landscapes']:.3f} | {t['forward_s']:.2f} | {t['write_s']:.3f} | "
                     f"{t['other_s']:.3f} |")
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
    print(f"\nthreads={report['environment']['threads']}  loadavg before {load_before[0]:.2f}, "
          f"after {report['environment']['loadavg_after'][0]:.2f}  -> {args.out}")
    return report


if __name__ == "__main__":
    main()
