"""Benchmark: top-2 Hessian eigenvalues, craftlab Lanczos vs PyHessian's deflated power iteration.

On one 128-image ``digits`` validation batch, for vit-tiny, resnet-tiny and a small CNN defined here:

* craftlab: ``craftlab.hessian.top_hessian_eigenvalues(k=2, method="lanczos", tol=TOL, max_iter=100)``;
* PyHessian (PyPI ``pyhessian`` 0.1): ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=2,
  maxIter=100, tol=TOL)``.

Both stop on the same test, the relative change of the eigenvalue estimates between iterations
(|new − old| / (|old| + 1e-6) < TOL, PyHessian's own criterion; craftlab applies it to the top-2 Ritz
values), both build the gradient graph once and reuse it for every Hessian-vector product (HVP), and both
timings include building that graph. Each is run once untimed (warm-up), then ``--repeats`` times in
alternating order with seeds 0, 1, 2, ...; times are medians. A reference is computed once per model in
float64 (craftlab Lanczos, tol 1e-9) to say which of the two is more accurate. craftlab's Lanczos also
requires its Ritz error estimate to be below tol (PyHessian's test alone can stop early, on a plateau),
so it is usually more accurate at the same tol; one extra PyHessian run at ``--tight-tol`` shows what
matching that accuracy costs PyHessian. For k ≥ 2 craftlab's count includes the restarted Lanczos run in
the orthogonal complement of the eigenvectors found, which is how it sees a repeated eigenvalue (a single
Lanczos run cannot); PyHessian's deflated power iteration sees them by construction.

Wrapper patches (nothing in site-packages is edited):

* PyHessian builds its double-backward graph through timm's fused ``scaled_dot_product_attention``, whose
  backward has no derivative on CPU ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
  is not implemented"); it is run under craftlab's own ``math_attention()`` (``sdpa_kernel(SDPBackend.MATH)``).
* ``pyhessian.hessian.hessian_vector_product`` is wrapped to count HVPs.
* PyHessian leaves ``.grad`` tensors holding the graph on the model (and calls ``model.eval()``), so it gets
  a deep copy per run (copy time excluded), whose grads are cleared afterwards.

Usage::

    python benchmarks/bench_hessian.py [--threads N] [--repeats 3] [--tol 1e-3]
        [--models vit-tiny resnet-tiny small-cnn] [--no-summary]

Prints a markdown table and writes ``benchmarks/results/hessian.json``.
"""

from __future__ import annotations

import argparse
import copy
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

RESULTS = ROOT / "benchmarks" / "results" / "hessian.json"


class SmallCNN(nn.Module):
    """conv(1→16, 3x3) → ReLU → maxpool → conv(16→32, 3x3) → ReLU → maxpool → linear(32·7·7 → 10); 28x28x1 input."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _model(name: str) -> tuple[nn.Module, str]:
    """Zoo models: the pretrained weights if already on disk (never pretrains), else a fresh init."""
    if name == "small-cnn":
        torch.manual_seed(0)
        return SmallCNN(), "random init (seed 0)"
    from craftlab import create_model
    from craftlab.models import zoo_checkpoint_dir

    if zoo_checkpoint_dir(name) is not None:
        return create_model(name, num_classes=10, pretrained=True), "pretrained (mnist5k)"
    return create_model(name, num_classes=10, pretrained=False), "random init"


def run_craftlab(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], tol: float, max_iter: int,
                 seed: int) -> dict[str, Any]:
    from craftlab.probes.hessian import top_hessian_eigenvalues

    t0, c0 = time.perf_counter(), time.process_time()
    r = top_hessian_eigenvalues(model, batch, k=2, tol=tol, max_iter=max_iter, seed=seed)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "eigenvalues": r.eigenvalues, "n_hvp": r.n_hvp, "converged": r.converged}


_PYHESSIAN_HVP = {"count": 0}


def _pyhessian():
    import importlib

    # ``import pyhessian.hessian`` would give the class: the package re-exports it under the module's name
    ph = importlib.import_module("pyhessian.hessian")
    if not getattr(ph, "_craftlab_counting", False):
        original = ph.hessian_vector_product

        def counted(*args: Any, **kwargs: Any):
            _PYHESSIAN_HVP["count"] += 1
            return original(*args, **kwargs)

        ph.hessian_vector_product = counted
        ph._craftlab_counting = True
    return ph


def run_pyhessian(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], tol: float, max_iter: int,
                  seed: int) -> dict[str, Any]:
    from craftlab.probes._probe import math_attention

    ph = _pyhessian()
    m = copy.deepcopy(model)
    _PYHESSIAN_HVP["count"] = 0
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    with math_attention():
        h = ph.hessian(m, nn.CrossEntropyLoss(), data=batch, cuda=False)
        values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=2)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    n_hvp = _PYHESSIAN_HVP["count"]
    for p in m.parameters():  # break the grad -> graph -> parameter reference cycle
        p.grad = None
    del h, m
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "eigenvalues": sorted(values, key=lambda v: -abs(v)),
            "n_hvp": n_hvp,
            "converged": n_hvp < 2 * max_iter}


def reference(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Top-2 eigenvalues of the float64 copy (Lanczos, tol 1e-9, up to 600 HVPs over both Lanczos runs)."""
    from craftlab.probes.hessian import top_hessian_eigenvalues

    m = copy.deepcopy(model).double()
    t0 = time.perf_counter()
    r = top_hessian_eigenvalues(m, (batch[0].double(), batch[1]), k=2, tol=1e-9, max_iter=600, seed=123)
    return {"eigenvalues": r.eigenvalues, "n_hvp": r.n_hvp, "converged": r.converged,
            "seconds": time.perf_counter() - t0}


def _rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def bench_model(name: str, batch: tuple[torch.Tensor, torch.Tensor], tol: float, max_iter: int,
                repeats: int, tight_tol: float) -> dict[str, Any]:
    model, weights = _model(name)
    print(f"[{name}] reference ...", flush=True)
    ref = reference(model, batch)
    print(f"[{name}] reference {ref['eigenvalues']} ({ref['n_hvp']} HVPs, {ref['seconds']:.1f} s); warm-up ...",
          flush=True)
    run_craftlab(model, batch, tol, max_iter, seed=99)
    run_pyhessian(model, batch, tol, max_iter, seed=99)
    runs: dict[str, list[dict]] = {"craftlab": [], "pyhessian": []}
    for r in range(repeats):
        order = ["craftlab", "pyhessian"] if r % 2 == 0 else ["pyhessian", "craftlab"]
        for what in order:
            fn = run_craftlab if what == "craftlab" else run_pyhessian
            runs[what].append(fn(model, batch, tol, max_iter, seed=r))
            print(f"[{name}] rep {r} {what}: {runs[what][-1]}", flush=True)
    # PyHessian once more at a tolerance tight enough for craftlab-level accuracy (one run, seed 0)
    tight = run_pyhessian(model, batch, tight_tol, max_iter, seed=0)
    tight["tol"] = tight_tol
    tight["rel_err_vs_reference"] = _rel(tight["eigenvalues"], ref["eigenvalues"])
    print(f"[{name}] PyHessian tol {tight_tol:g}: {tight}", flush=True)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(x["cpu_seconds"] for x in v) for k, v in runs.items()}
    agree = [_rel(c["eigenvalues"], p["eigenvalues"]) for c, p in zip(runs["craftlab"], runs["pyhessian"])]
    return {
        "model": name, "weights": weights, "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "reference": ref, "runs": runs, "median_s": med, "speedup": med["pyhessian"] / med["craftlab"],
        "median_cpu_s": med_cpu, "speedup_cpu": med_cpu["pyhessian"] / med_cpu["craftlab"],
        "median_hvp": {k: statistics.median(x["n_hvp"] for x in v) for k, v in runs.items()},
        "max_rel_diff_craftlab_vs_pyhessian": max(agree),
        "max_rel_err_vs_reference": {k: max(_rel(x["eigenvalues"], ref["eigenvalues"]) for x in v)
                                     for k, v in runs.items()},
        "pyhessian_tight": tight,
    }


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def table(rows: list[dict], tol: float) -> str:
    lines = [
        (f"| model | params | weights | craftlab λ1, λ2 | PyHessian λ1, λ2 | float64 reference λ1, λ2 | "
        f"craftlab vs PyHessian (max rel. diff) | max rel. err vs ref: craftlab / PyHessian | "
        f"HVPs craftlab / PyHessian | time craftlab (s) | time PyHessian (s) | speed-up (tol {tol:g}) | "
         f"CPU-time speed-up |"),
        "|" + "---|" * 13,
    ]
    for r in rows:
        c, p = r["runs"]["craftlab"][0], r["runs"]["pyhessian"][0]
        e = r["max_rel_err_vs_reference"]
        lines.append(
            f"| {r['model']} | {r['num_params']:,} | {r['weights']} | {_fmt(c['eigenvalues'])} | "
            f"{_fmt(p['eigenvalues'])} | "
            f"{_fmt(r['reference']['eigenvalues'])} | {100 * r['max_rel_diff_craftlab_vs_pyhessian']:.2f}% | "
            f"{100 * e['craftlab']:.2f}% / {100 * e['pyhessian']:.2f}% | "
            f"{r['median_hvp']['craftlab']:g} / {r['median_hvp']['pyhessian']:g} | {r['median_s']['craftlab']:.2f} | "
            f"{r['median_s']['pyhessian']:.2f} | {r['speedup']:.2f}× | {r['speedup_cpu']:.2f}× |")
    return "\n".join(lines)


def bench_summary(names: list[str], batch: tuple[torch.Tensor, torch.Tensor], repeats: int) -> list[dict]:
    """Wall time of ``sharpness_summary`` with its defaults: first call on the model, then the median of warm calls."""
    from craftlab.probes.sharpness import sharpness_summary

    out = []
    for name in names:
        model, weights = _model(name)
        times, res = [], None
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            res = sharpness_summary(model, batch)
            times.append(time.perf_counter() - t0)
        out.append({"model": name, "weights": weights, "first_s": times[0],
                    "median_warm_s": statistics.median(times[1:]), "runs_s": times, "summary": res})
        print(f"[summary {name}] {times} {res}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit-tiny", "resnet-tiny", "small-cnn"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-3, help="relative-change tolerance for both (PyHessian's default)")
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--tight-tol", type=float, default=1e-5,
                    help="one extra PyHessian run at this tolerance, to compare at matched accuracy")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-summary", action="store_true", help="skip timing sharpness_summary on the zoo models")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from craftlab.data import load_data

    x, y = next(iter(load_data("digits").loader("val", batch_size=args.batch_size)))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = [bench_model(name, (x, y), args.tol, args.max_iter, args.repeats, args.tight_tol) for name in args.models]
    summary = [] if args.no_summary else bench_summary(
        [m for m in args.models if m != "small-cnn"], (x, y), args.repeats)
    from importlib.metadata import version

    report = {
        "benchmark": "top-2 Hessian eigenvalues", "tol": args.tol, "max_iter": args.max_iter,
        "repeats": args.repeats,
        "batch": {"dataset": "digits", "split": "val", "size": len(y), "shape": list(x.shape)},
        "environment": {"torch": torch.__version__, "pyhessian": version("pyhessian"),
                        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "python": platform.python_version(), "loadavg_before": load_before,
                        "loadavg_after": os.getloadavg(), "total_s": time.perf_counter() - t0},
        "results": rows, "table": table(rows, args.tol), "sharpness_summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(report["table"])
    print(f"\nPyHessian at tol {args.tight_tol:g} (one run, seed 0), to compare at matched accuracy:\n")
    print("| model | HVPs | time (s) | max rel. err vs ref | craftlab median time (s) at tol "
          f"{args.tol:g} | time ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        t = r["pyhessian_tight"]
        print(f"| {r['model']} | {t['n_hvp']} | {t['seconds']:.2f} | {100 * t['rel_err_vs_reference']:.3f}% | "
              f"{r['median_s']['craftlab']:.2f} | {t['seconds'] / r['median_s']['craftlab']:.2f}× |")
    if summary:
        print("\n| model | `sharpness_summary` first call (s) | warm median (s) | HVPs | λmax | trace ± stderr | "
              "ε-sharpness (ρ=0.05) |")
        print("|---|---|---|---|---|---|---|")
        for s in summary:
            r = s["summary"]
            print(f"| {s['model']} | {s['first_s']:.2f} | {s['median_warm_s']:.2f} | {r['n_hvp']} | "
                  f"{r['lambda_max']:.4g} | {r['trace']:.4g} ± {r['trace_stderr']:.2g} | {r['eps_sharpness']:.4g} |")
    print(f"\nthreads={report['environment']['threads']}  loadavg before {load_before[0]:.2f}, "
          f"after {report['environment']['loadavg_after'][0]:.2f}  -> {args.out}")
    return report


if __name__ == "__main__":
    main()
