"""``craftlab transforms``: list the registered train-time transforms (stand-ins for SNT's unpublished one), with
their parameters and references, and which layers of a model each would re-parameterize.

A CLI extension (``add_parser(subparsers)`` / ``run(args)``): nothing heavy is imported until it runs.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``transforms`` command to the ``craftlab`` command line."""
    s = subparsers.add_parser("transforms", help="list the train-time transforms for `craftlab pretrain --transform`")
    s.add_argument("--model", default=None, help="also show which layers of this zoo / timm model each transform "
                   "re-parameterizes")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print each transform: name, parameters with defaults, reference; with ``--model``, its target layers."""
    from ..models import build_model
    from ..transforms import get_transform, list_transforms

    model = build_model(args.model) if args.model else None
    out = {}
    for name in list_transforms():
        t = get_transform(name)
        entry = {**t.describe(), "requirement": t.requirement}
        if model is not None:
            entry["layers"] = t.targets(model)
        out[name] = entry
    if args.json:
        print(json.dumps(out))
        return 0
    for name, e in out.items():
        params = ", ".join(f"{k}={v!r}" for k, v in e["params"].items()) or "no parameters"
        print(f"{name} ({params}): {e['reference']}")
        if model is not None:
            layers = e["layers"]
            shown = ", ".join(layers[:6]) + (f" (+{len(layers) - 6} more)" if len(layers) > 6 else "")
            detail = f": {shown}" if layers else f" (it needs {e['requirement']})"
            print(f"    {args.model}: {len(layers)} layer(s){detail}")
    return 0
