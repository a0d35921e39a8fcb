"""Re-run every benchmark and rewrite benchmarks/RESULTS.md.

    python -m benchmarks.run            # all
    python -m benchmarks.run sam craft  # a subset (sections of the others are kept from the last run)
    python -m benchmarks.run --threads 1 craft   # pin torch's intra-op threads (a shared, busy machine)
    python -m benchmarks.run claims --report     # flags after the names go to each benchmark's main

Each section records the command and the machine it ran on. Ratios are measured in one run.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
RESULTS_MD = HERE / "RESULTS.md"
BENCHES = {
    "sam": ("bench_sam", "SAM step time vs the base optimizer"),
    "sam_modes": ("bench_sam_modes", "Efficient SAM modes: step cost vs AdamW and the share of SAM's benefit kept"),
    "craft": ("bench_craft", "The CrAFT table on the embedded default"),
    "hessian": ("bench_hessian", "Top-2 Hessian eigenvalues: craftlab vs PyHessian"),
    "grid_batching": ("bench_grid_batching", "Landscape grid: point by point vs vmapped points vs the forward floor"),
    "landscape": ("bench_landscape", "21x21 loss plane: craftlab vs loss-landscapes vs the forward-pass floor"),
    "qwt": ("bench_qwt", "QwT / QwT-v2 compensation on the embedded default"),
    "snt": ("bench_snt", "SNT: compression-friendly pretraining with stand-in transforms"),
    "supernet": ("bench_supernet", "Mixed-precision supernet with LoRA: Pareto front, memory, search"),
    "adapt": ("bench_adapt", "Frozen-backbone adaptation: LAST, MIET vs linear probe / LoRA / full"),
    "adapt_curves": ("bench_adapt_curves", "LAST vs LoRA vs full: accuracy by epoch and wall time, tuned lr"),
    "app": ("bench_app", "The app: slider -> answer latency, landscapes, start-up"),
    "claims": ("bench_claims", "The claims ledger: each paper's headline claim at its primary endpoint"),
    "scale": ("bench_scale", "Scale-out: a sweep on 1 vs 2 Ray workers, DDP's per-step overhead on 2 processes"),
    "compose": ("bench_compose", "The composition study: which gains add up, which overlap, which step does not pay"),
}


LEDGER_PAPERS = {"craft": ("CrAFT",), "qwt": ("QwT", "QwT-v2"), "snt": ("SNT",), "supernet": ("Supernet",),
                 "adapt": ("LAST", "MIET")}
"""A paper's benchmark section states its primary endpoints, seeds and power (read from the claims ledger)."""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {platform.system()}")


def _sections() -> dict[str, str]:
    if not RESULTS_MD.exists():
        return {}
    parts = re.split(r"^## ", RESULTS_MD.read_text(), flags=re.M)[1:]
    return {p.split("\n", 1)[0].split(" — ")[0].strip(): "## " + p for p in parts}


def main(names: list[str], argv: list[str] | None = None) -> None:
    sections = _sections()
    for key in names:
        module, title = BENCHES[key]
        mod = importlib.import_module(f"benchmarks.{module}")
        buf = io.StringIO()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        takes_argv = "argv" in inspect.signature(mod.main).parameters
        with contextlib.redirect_stdout(buf):
            mod.main(list(argv or [])) if takes_argv else mod.main()
        wall = time.perf_counter() - t0
        load = f"load average before/after {load0:.1f}/{os.getloadavg()[0]:.1f}"
        out = buf.getvalue()
        sys.stdout.write(out)
        body = out.rstrip()  # progress goes to stderr: every printed line is a reading (none is cut)
        if key in LEDGER_PAPERS:
            from craftlab.analysis.ledger import endpoint_note

            body = endpoint_note(LEDGER_PAPERS[key]) + "\n\n" + body
        extra = "".join(f" {a}" for a in argv or [])
        sections[key] = (f"## {key} — {title}\n\nCommand: `python -m benchmarks.run {key}{extra}` "
                         f"({wall:.0f} s on {machine()}; {load}; {time.strftime('%Y-%m-%d')}).\n\n{body}\n\n")
    order = [k for k in BENCHES if k in sections]
    RESULTS_MD.write_text("# Benchmark results\n\nRe-run all: `python -m benchmarks.run` (or `make bench`). "
                          "Each section names its command and machine; ratios are taken within one run.\n\n"
                          + "".join(sections[k] for k in order))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--threads"]:
        torch.set_num_threads(int(args[1]))
        args = args[2:]
    flags = [a for a in args if a.startswith("--")]  # passed on to each benchmark's main (e.g. claims --report)
    names = [a for a in args if not a.startswith("--")]
    main(names or list(BENCHES), flags)
