"""``craftlab compose``: the composition study from the command line.

    craftlab compose --model resnet-tiny --design full --seeds 5
    craftlab compose --model vit-tiny --design fractional --seeds 3 --json

Wired into ``craftlab.cli`` by ``add_parser(subparsers)`` and ``run(args)``; errors (ValueError) are left to
the caller, which prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

EXAMPLES = """\
examples:
  craftlab compose --model resnet-tiny --design full --seeds 5
  craftlab compose --model vit-tiny --design fractional --seeds 3 --json
  craftlab compose --model resnet-tiny --compression "wanda 70%" --design fractional --seeds 3
  craftlab compose --model vit-tiny --design supernet --seeds 3
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compose`` to the ``craftlab`` subparsers."""
    from ..studies.compose import DESIGNS  # light: the study imports torch only when it computes
    p = subparsers.add_parser("compose", help="the composition study: which gains add up, which overlap",
                              description="Run a factorial (or fractional) design of fine-tuning (AdamW/SAM) × BN "
                                          "re-estimation (CNNs) × compensation (none/QwT/QwT-v2) at the ledger's "
                                          "compression endpoint, paired by seed, from cached runs.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit-tiny", help="vit-tiny or resnet-tiny (default vit-tiny)")
    p.add_argument("--design", default="full", choices=DESIGNS,
                   help="full factorial; fractional: the documented fractional design (fewer runs); snt: the SNT "
                        "pretraining factor (Adam / repvgg per seed) × the rest (CNNs); supernet: the supernet's "
                        "pick at 5%% of FP32 BitOPs in place of the PTQ setting, × SAM (ViTs; a supernet training "
                        "per seed and arm)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--compression", default=None, help="setting label (default: the ledger's primary endpoint)")
    p.add_argument("--budget", type=int, default=None, help="most compress+evaluate runs (default 300)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _clean(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in records]


def run(args: argparse.Namespace) -> int:
    from ..analysis.factorial import analyze
    from ..studies.compose import DEFAULT_BUDGET, compose

    table = compose(args.model, args.design, args.seeds, compression=args.compression,
                    budget=args.budget or DEFAULT_BUDGET)
    res = analyze(table)
    cols = ["accuracy", "size_mb", "bitops", "params_added", "train_s", "calib_s"]
    cells = table.groupby("label", sort=False)[cols].mean().reset_index()
    if args.json:
        print(json.dumps({"model": args.model, "design": args.design, "seeds": int(table["seed"].nunique()),
                          "cells": _clean(cells.to_dict("records")), "main": _clean(res.main.to_dict("records")),
                          "interactions": _clean(res.interactions.to_dict("records")),
                          "additivity": _clean(res.additivity.to_dict("records")), "lines": res.lines}, default=str))
        return 0
    print(f"{args.model}, design {args.design}, {table['seed'].nunique()} paired seeds")
    for r in cells.to_dict("records"):
        print(f"  {r['label']:<40} {100 * r['accuracy']:5.1f} %  {r['size_mb']:.3f} MB  +{r['params_added']:.0f} "
              f"params  train {r['train_s']:.0f} s  calib {r['calib_s']:.1f} s")
    for line in res.lines:
        print(line)
    return 0
