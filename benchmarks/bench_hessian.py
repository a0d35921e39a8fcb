"""Benchmark: top-2 Hessian eigenvalues, craftlab Lanczos vs PyHessian's deflated power iteration.

On one 128-image ``digits`` validation batch, for vit-tiny, resnet-tiny and a small CNN defined here:

* craftlab: ``craftlab.hessian.top_hessian_eigenvalues(k=2, method="lanczos", tol=TOL, max_iter=100)``;
* PyHessian (PyPI ``pyhessian`` 0.1): ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=2,
  maxIter=100, tol=TOL)``.

Two comparisons, both timed in interleaved rounds (seeds 0, 1, 2, ..., the order alternating each round; after
one untimed warm-up run each; times are medians, and include building the gradient graph, which both build once
and reuse for every Hessian-vector product (HVP)):

1. **Same tolerance** (``--tol``): both stop on the relative change of their estimates between iterations
   (|new − old| / (|old| + 1e-6) < tol, PyHessian's own criterion); craftlab's Lanczos also requires its Ritz
   error estimate below tol, so it is usually the more accurate of the two at the same tol.
2. **Matched accuracy** (the headline): each tool at the loosest tolerance of ``--ladder`` at which every seed's
   top-2 eigenvalues lie within ``--max-err`` (0.5 %) of a float64 reference (craftlab Lanczos in float64, tol
   1e-9), found by walking the ladder from its loosest end, then timed. The reference is used to pick each
   tool's tolerance, the same rule for both.

For k ≥ 2 craftlab's count includes the restarted Lanczos run in the orthogonal complement of the eigenvectors
found, which is how it sees a repeated eigenvalue (a single Lanczos run cannot); PyHessian's deflated power
iteration sees them by construction. ``hvp_costs`` times the parts (graph, one HVP, batched HVPs through
``is_grads_batched``, a forward + backward), to say where the time goes.

Wrapper patches (nothing in site-packages is edited):

* PyHessian builds its double-backward graph through timm's fused ``scaled_dot_product_attention``, whose
  backward has no derivative on CPU ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
  is not implemented"); it is run under craftlab's own ``math_attention()`` (``sdpa_kernel(SDPBackend.MATH)``).
* ``pyhessian.hessian.hessian_vector_product`` is wrapped to count HVPs.
* PyHessian leaves ``.grad`` tensors holding the graph on the model (and calls ``model.eval()``), so it gets
  a deep copy per run (copy time excluded), whose grads are cleared afterwards.

Usage::

    python benchmarks/bench_hessian.py [--threads N] [--repeats 3] [--tol 1e-3] [--max-err 5e-3]
        [--ladder 1e-2 3e-3 1e-3 3e-4 1e-4 3e-5] [--models vit-tiny resnet-tiny small-cnn] [--no-summary]

Prints markdown tables and writes ``benchmarks/results/hessian.json``.
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


def _interleaved(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], tols: dict[str, float], max_iter: int,
                 repeats: int, label: str) -> dict[str, list[dict]]:
    """`repeats` rounds, seeds 0, 1, ...; each round runs both tools (each at its tolerance), the order alternating."""
    runs: dict[str, list[dict]] = {"craftlab": [], "pyhessian": []}
    for r in range(repeats):
        for what in (["craftlab", "pyhessian"] if r % 2 == 0 else ["pyhessian", "craftlab"]):
            fn = run_craftlab if what == "craftlab" else run_pyhessian
            runs[what].append(fn(model, batch, tols[what], max_iter, seed=r))
            print(f"[{label}] rep {r} {what} tol {tols[what]:g}: {runs[what][-1]}", flush=True)
    return runs


def _loosest_accurate(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], tool: str, ladder: list[float],
                      max_iter: int, repeats: int, ref: list[float], max_err: float, label: str) -> dict[str, Any]:
    """Walk `ladder` (loosest first) until every seed's top-2 values lie within `max_err` of the reference."""
    fn = run_craftlab if tool == "craftlab" else run_pyhessian
    tried = []
    for tol in ladder:
        errs, hvps = [], []
        for seed in range(repeats):
            out = fn(model, batch, tol, max_iter, seed=seed)
            errs.append(_rel(out["eigenvalues"], ref))
            hvps.append(out["n_hvp"])
            if errs[-1] > max_err:
                break
        tried.append({"tol": tol, "max_rel_err": max(errs), "n_hvp": hvps, "seeds_run": len(errs)})
        print(f"[{label}] {tool} tol {tol:g}: errors {[f'{e:.2e}' for e in errs]} HVPs {hvps}", flush=True)
        if max(errs) <= max_err and len(errs) == repeats:
            return {"tol": tol, "tried": tried}
    return {"tol": None, "tried": tried}


def hvp_costs(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], rounds: int = 5) -> dict[str, float]:
    """CPU seconds (median of `rounds` interleaved rounds) of: building the gradient graph, one HVP through it, one
    batched HVP of 2 and of 4 vectors (``autograd.grad(..., is_grads_batched=True)``, vmap over the backward: what
    a block Lanczos would use), and a plain forward + backward."""
    from craftlab.probes._probe import math_attention, probing
    from craftlab.probes.hessian import HessianOperator

    times: dict[str, list[float]] = {}
    x, y = batch
    with probing(model, None) as sel:
        ps = [p for _, p in sel]
        gen = torch.Generator().manual_seed(0)
        vs = {b: [torch.randn((b, *p.shape), generator=gen) for p in ps] for b in (1, 2, 4)}
        op = HessianOperator(model, [batch], ps, F.cross_entropy)
        gs = op._graphs[0]

        def batched(b: int) -> None:
            with math_attention():
                torch.autograd.grad(gs, ps, grad_outputs=vs[b], retain_graph=True, is_grads_batched=True)

        def fwd_bwd() -> None:
            with math_attention():
                torch.autograd.grad(F.cross_entropy(model(x), y), ps)

        jobs = {"graph": lambda: HessianOperator(model, [batch], ps, F.cross_entropy),
                "hvp": lambda: op.matvec([v[0] for v in vs[1]]), "hvp_batched2": lambda: batched(2),
                "hvp_batched4": lambda: batched(4), "forward_backward": fwd_bwd}
        for _ in range(rounds + 1):  # the first round warms up
            for name, job in jobs.items():
                c0 = time.process_time()  # CPU time: robust to other jobs on a shared machine (one torch thread)
                job()
                times.setdefault(name, []).append(time.process_time() - c0)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def bench_model(name: str, batch: tuple[torch.Tensor, torch.Tensor], tol: float, max_iter: int,
                repeats: int, ladder: list[float], max_err: float) -> dict[str, Any]:
    model, weights = _model(name)
    print(f"[{name}] reference ...", flush=True)
    ref = reference(model, batch)
    print(f"[{name}] reference {ref['eigenvalues']} ({ref['n_hvp']} HVPs, {ref['seconds']:.1f} s); warm-up ...",
          flush=True)
    run_craftlab(model, batch, tol, max_iter, seed=99)
    run_pyhessian(model, batch, tol, max_iter, seed=99)
    costs = hvp_costs(model, batch)
    print(f"[{name}] HVP costs (s): {costs}", flush=True)
    runs = _interleaved(model, batch, {"craftlab": tol, "pyhessian": tol}, max_iter, repeats, f"{name} same tol")
    # matched accuracy: each tool at the loosest tolerance of the ladder at which all its seeds are within max_err
    chosen = {tool: _loosest_accurate(model, batch, tool, ladder, max_iter, repeats, ref["eigenvalues"], max_err,
                                      name) for tool in ("craftlab", "pyhessian")}
    matched = None
    if all(c["tol"] is not None for c in chosen.values()):
        mruns = _interleaved(model, batch, {k: c["tol"] for k, c in chosen.items()}, max_iter, repeats,
                             f"{name} matched")
        mmed = {k: statistics.median(x["seconds"] for x in v) for k, v in mruns.items()}
        mcpu = {k: statistics.median(x["cpu_seconds"] for x in v) for k, v in mruns.items()}
        matched = {"tol": {k: c["tol"] for k, c in chosen.items()}, "runs": mruns, "median_s": mmed,
                   "speedup": mmed["pyhessian"] / mmed["craftlab"], "median_cpu_s": mcpu,
                   "speedup_cpu": mcpu["pyhessian"] / mcpu["craftlab"],
                   "median_hvp": {k: statistics.median(x["n_hvp"] for x in v) for k, v in mruns.items()},
                   "max_rel_err_vs_reference": {k: max(_rel(x["eigenvalues"], ref["eigenvalues"]) for x in v)
                                                for k, v in mruns.items()}}
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(x["cpu_seconds"] for x in v) for k, v in runs.items()}
    med_hvp = {k: statistics.median(x["n_hvp"] for x in v) for k, v in runs.items()}
    agree = [_rel(c["eigenvalues"], p["eigenvalues"]) for c, p in zip(runs["craftlab"], runs["pyhessian"])]
    return {
        "model": name, "weights": weights, "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "reference": ref, "hvp_costs": costs, "runs": runs, "median_s": med,
        "speedup": med["pyhessian"] / med["craftlab"],
        "median_cpu_s": med_cpu, "speedup_cpu": med_cpu["pyhessian"] / med_cpu["craftlab"], "median_hvp": med_hvp,
        # where the CPU time goes: graph + HVPs × one HVP's cost, the rest is the solver's own work
        "predicted_cpu_s": {k: costs["graph"] + med_hvp[k] * costs["hvp"] for k in med_hvp},
        "max_rel_diff_craftlab_vs_pyhessian": max(agree),
        "max_rel_err_vs_reference": {k: max(_rel(x["eigenvalues"], ref["eigenvalues"]) for x in v)
                                     for k, v in runs.items()},
        "ladder": chosen, "matched": matched,
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
    ap.add_argument("--ladder", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5],
                    help="tolerances tried, loosest first, for the matched-accuracy comparison")
    ap.add_argument("--max-err", type=float, default=5e-3,
                    help="matched accuracy: every seed's top-2 values within this relative error of the reference")
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
    rows = [bench_model(name, (x, y), args.tol, args.max_iter, args.repeats, args.ladder, args.max_err)
            for name in args.models]
    summary = [] if args.no_summary else bench_summary(
        [m for m in args.models if m != "small-cnn"], (x, y), args.repeats)
    from importlib.metadata import version

    report = {
        "benchmark": "top-2 Hessian eigenvalues", "tol": args.tol, "max_iter": args.max_iter,
        "ladder": args.ladder, "max_err": args.max_err,
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
    print(f"\nMatched accuracy: each tool at the loosest tolerance of {args.ladder} at which all {args.repeats} "
          f"seeds land within {100 * args.max_err:g} % of the float64 reference; then {args.repeats} interleaved "
          "rounds at those tolerances:\n")
    print("| model | tol craftlab / PyHessian | HVPs craftlab / PyHessian | max rel. err vs ref: craftlab / "
          "PyHessian | time craftlab (s) | time PyHessian (s) | speed-up | CPU-time speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["matched"]
        if m is None:
            print(f"| {r['model']} | no tolerance of the ladder reached {100 * args.max_err:g} %: "
                  f"{ {k: c['tried'][-1] for k, c in r['ladder'].items()} } | | | | | | |")
            continue
        print(f"| {r['model']} | {m['tol']['craftlab']:g} / {m['tol']['pyhessian']:g} | "
              f"{m['median_hvp']['craftlab']:g} / {m['median_hvp']['pyhessian']:g} | "
              f"{100 * m['max_rel_err_vs_reference']['craftlab']:.3f}% / "
              f"{100 * m['max_rel_err_vs_reference']['pyhessian']:.3f}% | {m['median_s']['craftlab']:.2f} | "
              f"{m['median_s']['pyhessian']:.2f} | **{m['speedup']:.2f}×** | {m['speedup_cpu']:.2f}× |")
    print("\nWhere the time goes, in CPU seconds (median of 5 interleaved rounds each; batched = one double backward "
          "for b vectors):\n")
    print("| model | graph (s) | 1 HVP (s) | 2 HVPs batched (s) | 4 HVPs batched (s) | forward+backward (s) | "
          f"craftlab at tol {args.tol:g}: graph + HVPs × 1 HVP vs measured (CPU s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["hvp_costs"]
        b2, b4 = c["hvp_batched2"], c["hvp_batched4"]
        print(f"| {r['model']} | {c['graph']:.3f} | {c['hvp']:.3f} | {b2:.3f} ({b2 / c['hvp']:.2f}× one) | "
              f"{b4:.3f} ({b4 / c['hvp']:.2f}× one) | {c['forward_backward']:.3f} | "
              f"{r['predicted_cpu_s']['craftlab']:.2f} vs {r['median_cpu_s']['craftlab']:.2f} |")
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
