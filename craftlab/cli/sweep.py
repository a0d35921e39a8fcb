"""The ``craftlab sweep`` command: its arguments and what it runs (the in-process or the Ray engine).

The address of ``--engine ray`` is checked before anything is loaded; a failing cell is one line naming it (exit
2), or with ``--keep-going`` a table of failed cells after the results (exit 1); the Ray engine reports how many
cells it computed and how many came from the cell store.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import settings
from ..settings import COMPENSATIONS, DEFAULT_RECIPE, PRUNE_METHODS
from ._args import bit_pair, data_for, load_uncompressed, recipe_help


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``sweep`` to the ``craftlab`` subcommands."""
    s = sub.add_parser("sweep", help="checkpoints x sparsities x bit settings -> table (CSV + JSON)")
    s.add_argument("--checkpoint", nargs="+", required=True)
    s.add_argument("--data", default=None)
    s.add_argument("--methods", nargs="+", default=["magnitude", "wanda"], choices=PRUNE_METHODS,
                   help="pruning scores")
    s.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9],
                   help="fractions of weights pruned, one setting each")
    s.add_argument("--patterns", nargs="*", default=["2:4"], help="N:M patterns (none: give --patterns alone)")
    s.add_argument("--bits", nargs="+", type=bit_pair, default=[(8, 8), (6, 6), (4, 8), (4, 4), (3, 8)],
                   help="W,A bit pairs (8,8 or 4,none), one quantization setting each (default: 8,8 6,6 4,8 4,4 3,8)")
    s.add_argument("--recipe", default=DEFAULT_RECIPE, choices=settings.RECIPES,
                   help="the bit settings' " + recipe_help())
    s.add_argument("--compensate", nargs="+", default=[], choices=COMPENSATIONS, metavar="{qwt,qwt-v2}",
                   help="also run every pruning and bit setting with this compensation (one row each)")
    s.add_argument("--out", default=None, help="NAME.csv (also writes NAME.json) or a folder")
    s.add_argument("--engine", default="process", choices=["process", "ray"],
                   help="process: here (default); ray: every cell a Ray task, resumable (docs/scale_out.md)")
    s.add_argument("--address", default=None, help="--engine ray: the Ray cluster, HOST:PORT or ray://HOST:10001 "
                   "from a machine outside the cluster (default: RAY_ADDRESS, else a local cluster)")
    s.add_argument("--keep-going", action="store_true", help="skip cells that fail, list them (model, setting, "
                   "error) after the table and exit 1; default: stop at the first, with one line naming it")
    s.add_argument("--cpus-per-task", type=int, default=1, help="--engine ray: CPUs and threads of each cell")
    s.add_argument("--gpus-per-cell", type=float, default=None, help="--engine ray: share of a GPU each cell asks "
                   "for and runs on (default: 0.5 when the cluster has GPUs, else 0: CPUs)")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--json", action="store_true", help="print the table as JSON records (failed cells after it)")
    return s


def run(a: argparse.Namespace) -> int:
    """Run ``craftlab sweep`` with the parsed arguments `a`; the exit status."""
    from ..distributed.sweep import sweep

    if a.engine == "ray" and a.address is not None:  # before loading anything: a wrong address fails in seconds
        from ..distributed.connect import check_address

        check_address(a.address)
    elif a.address is not None:
        raise ValueError("--address is for --engine ray")
    if a.gpus_per_cell is not None:
        if a.engine != "ray":
            raise ValueError("--gpus-per-cell is for --engine ray")
        from ..distributed.cells import check_gpus_per_cell

        check_gpus_per_cell(a.gpus_per_cell)
    models = {c: load_uncompressed(c) for c in a.checkpoint}
    first = next(iter(models.values()))
    data = data_for(first.craftlab_meta, first, a.data)
    if a.recipe != DEFAULT_RECIPE and not a.keep_going:  # with --keep-going such cells fail and are listed
        from ..compression.pipeline import check_recipe_model

        for path, model in models.items():
            try:
                check_recipe_model(model, a.recipe)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
    df = sweep(models, data, out=a.out, progress=not a.quiet, methods=a.methods, sparsities=a.sparsities,
               patterns=a.patterns, bits=a.bits, recipe=a.recipe, compensations=a.compensate, engine=a.engine,
               address=a.address, keep_going=a.keep_going, cpus_per_task=a.cpus_per_task,
               gpus_per_cell=a.gpus_per_cell)
    if a.json:
        print(df.to_json(orient="records"))
    elif len(df):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    failed = df.attrs.get("failed") or []
    counts = df.attrs.get("cells")
    if counts:  # --engine ray: what was computed now and what came from the cell store
        from collections import Counter

        devices = Counter(p["device"] for p in df.attrs.get("placement") or [])
        print(f"cells: {counts['computed'] - len(failed)} computed, {counts['cached']} cached, {len(failed)} failed "
              f"(of {counts['total']})" + ("; computed on " + ", ".join(f"{d}: {n}" for d, n in sorted(
                  devices.items())) if devices else ""), file=sys.stderr)
    if failed:
        import pandas as pd

        print(f"\n{len(failed)} cell(s) failed:\n" + pd.DataFrame(failed).to_string(index=False))
        return 1
    return 0
