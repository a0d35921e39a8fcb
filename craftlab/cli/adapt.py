"""``craftlab adapt``: frozen-backbone adaptation from the command line.

    craftlab adapt train --method last --gap 2 --epochs 8            # one method, one seed
    craftlab adapt search --method last --lr 1e-3 3e-3 1e-2 --lsa-rank 8 16   # K-way grid, best on validation
    craftlab adapt compare --seeds 0 1 2 --out adapt.csv             # every method: accuracy, memory, time, bytes
    craftlab adapt bytes --k 4 --gap 2                               # bytes per image each method sends

Wired into ``craftlab.cli`` by ``add_parser(subparsers)`` and ``run(args)``; errors (ValueError, TypeError) are
left to the caller, which prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from ..registry import ADAPT_METHODS
from ._args import old_spelling

EXAMPLES = """\
examples:
  craftlab adapt train --method last --gap 2 --epochs 8
  craftlab adapt train --method miet --k 4 --transfer-bits 8 --json
  craftlab adapt search --method last --lr 1e-3 3e-3 1e-2 --lsa-rank 8 16
  craftlab adapt compare --seeds 0 1 2 --epochs 8 --out adapt.csv
  craftlab adapt bytes --k 4 --gap 2
"""
METHOD_CHOICES = ADAPT_METHODS.names()
"""Every registered adaptation method (read from craftlab/adapt/methods/ without importing them)."""


def _bits(value: str) -> int | None:
    if value.lower() in ("none", "32", "fp32", "float"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be 8, 4, 2 or none, got {value!r}") from None


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", default="vit-tiny", help="zoo or timm ViT name (default vit-tiny)")
    s.add_argument("--data", default="digits", help="dataset name (default digits)")
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--gap", type=int, default=1, help="LAST: one side block every g backbone blocks (default 1)")
    s.add_argument("--k", type=int, default=None, help="MIET: Gather*(k) = z_0 + ... + z_k (default: the depth L)")
    s.add_argument("--lsa-heads", type=int, default=1, help="attention heads of the LSA modules (default 1)")
    old_spelling(s, "--heads", "--lsa-heads")
    s.add_argument("--cache", default=None, help="side methods: 'memory' or a folder for the feature cache")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``adapt`` (with ``train``, ``search``, ``compare``, ``bytes``) to the ``craftlab`` subparsers."""
    p = subparsers.add_parser("adapt", help="frozen-backbone adaptation: LAST, MIET, linear probe, LoRA, full",
                              description="Adapt a pretrained ViT with its backbone frozen (LAST side-tuning, MIET "
                                          "edge tuning) or against the baselines (linear probe, LoRA, full).",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="adapt_command", metavar="ACTION")

    s = sub.add_parser("train", help="adapt with one method and report accuracy, parameters, time")
    _common(s)
    s.add_argument("--method", default="last", choices=METHOD_CHOICES,
                   help="adaptation method: LAST side-tuning, MIET, linear probe, LoRA or full fine-tuning")
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--weight-decay", type=float, default=0.05)
    s.add_argument("--lsa-rank", type=int, default=None, help="LAST: rank r < d of the LSA modules (default 16)")
    s.add_argument("--transfer-bits", type=_bits, default=None,
                   help="MIET: bits of the features sent to the device: none (float32), 8, 4 or 2")
    old_spelling(s, "--rank", "--lsa-rank")
    old_spelling(s, "--bits", "--transfer-bits")
    s.add_argument("--lora-rank", type=int, default=4)
    s.add_argument("--sam-rho", type=float, default=0.0, help="full fine-tuning with SAM when > 0")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("search", help="K side networks at once over a grid of lr x weight decay x rank")
    _common(s)
    s.add_argument("--method", default="last", choices=METHOD_CHOICES,
                   help="a side method (last, miet, linear: a network on the frozen backbone's taps) whose K "
                        "configurations train at once on one backbone pass")
    s.add_argument("--lr", type=float, nargs="+", default=None)
    s.add_argument("--weight-decay", type=float, nargs="+", default=[0.05])
    s.add_argument("--lsa-rank", type=int, nargs="+", default=None,
                   help="LAST: LSA ranks of the grid (default 16)")
    s.add_argument("--transfer-bits", type=_bits, default=None,
                   help="MIET: bits of the features sent to the device: none (float32), 8, 4 or 2")
    old_spelling(s, "--rank", "--lsa-rank")
    old_spelling(s, "--bits", "--transfer-bits")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="write the table as CSV")

    s = sub.add_parser("compare", help="every method over seeds: accuracy, parameters, memory, time, bytes")
    _common(s)
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--out", default=None, help="write the per-seed table as CSV")

    s = sub.add_parser("bytes", help="bytes per image each method sends to a device")
    s.add_argument("--model", default="vit-tiny")
    s.add_argument("--data", default="digits")
    s.add_argument("--gap", type=int, default=1, help="LAST: one side block every g backbone blocks")
    s.add_argument("--k", type=int, default=None, help="MIET: Gather*(k) = z_0 + ... + z_k (default: the depth L)")
    s.add_argument("--json", action="store_true")
    p.set_defaults(adapt_parser=p)
    return p


def _load(a: argparse.Namespace):
    import craftlab

    data = craftlab.load_data(a.data)
    model = craftlab.create_model(a.model, num_classes=data.num_classes, progress=False)
    return model, data


def _print(obj: Any, as_json: bool) -> None:
    import pandas as pd

    if as_json:
        payload = obj.to_dict(orient="records") if isinstance(obj, pd.DataFrame) else obj
        print(json.dumps(payload, indent=1, default=str))
    elif isinstance(obj, pd.DataFrame):
        print(obj.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    else:
        print("\n".join(f"{k}: {v}" for k, v in obj.items()))


def run(a: argparse.Namespace) -> int:
    """Run ``craftlab adapt ACTION`` from parsed arguments; returns the exit status."""
    action = getattr(a, "adapt_command", None)
    if action is None:
        a.adapt_parser.print_help()
        return 0
    if action == "bytes":
        return _bytes(a)
    if action == "search" and not ADAPT_METHODS.get(a.method).side:  # said before the model and data load
        side = [n for n in METHOD_CHOICES if ADAPT_METHODS.get(n).side]
        raise ValueError(f"--method {a.method}: K-way search trains side networks ({', '.join(side)})")
    model, data = _load(a)
    common = dict(epochs=a.epochs, batch_size=a.batch_size, gap=a.gap, k=a.k, heads=a.lsa_heads,
                  cache=a.cache, device=a.device)
    if action == "train":
        from ..adapt.recipes import DEFAULT_RANK, adapt_model

        res = adapt_model(model, data, a.method, lr=a.lr, weight_decay=a.weight_decay, seed=a.seed,
                          rank=a.lsa_rank or DEFAULT_RANK, bits=a.transfer_bits, lora_rank=a.lora_rank,
                          sam_rho=a.sam_rho, **common)
        _print({"method": a.method, **res.metrics, "trainable_params": res.trainable_params,
                "time_per_epoch_s": round(res.time_per_epoch_s, 4), "config": res.config}, a.json)
        return 0
    if action == "search":
        from ..adapt.recipes import DEFAULT_LR, DEFAULT_RANK, adapt_search

        lrs = a.lr or [DEFAULT_LR[a.method] * f for f in (0.3, 1.0, 3.0)]
        has_rank = "rank" in ADAPT_METHODS.get(a.method).option_names()
        ranks = (a.lsa_rank or [DEFAULT_RANK]) if has_rank else [None]
        configs = [{"lr": lr, "weight_decay": wd, **({} if r is None else {"rank": r})}
                   for lr, wd, r in itertools.product(lrs, a.weight_decay, ranks)]
        res = adapt_search(model, data, configs, a.method, seed=a.seed, bits=a.transfer_bits, **common)
        _print(res.table, a.json)
        if not a.json:
            print(f"K = {len(configs)} networks in {res.time_s:.1f} s, {res.backbone_passes} backbone passes over "
                  f"the training set's batches; best on validation: row {int(res.table['best'].idxmax())}")
        if a.out:
            res.table.to_csv(a.out, index=False)
        return 0
    from ..studies.adapt import compare_methods

    kw = {k: v for k, v in common.items() if k not in ("epochs", "gap", "k") and v is not None}
    kw.pop("cache", None)
    df = compare_methods(model, data, seeds=a.seeds, epochs=a.epochs, gap=a.gap, k=a.k, **kw)
    summary = df.groupby("arm", sort=False).agg(test_accuracy=("test_accuracy", "mean"),
                                                 sd=("test_accuracy", "std"), params=("trainable_params", "first"),
                                                 memory_MB=("memory_bytes", lambda v: v.iloc[0] / 1e6),
                                                 s_per_epoch=("time_per_epoch_s", "mean"),
                                                 bytes_per_image=("bytes_per_image", "first")).reset_index()
    _print(summary, a.json)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(a.out, index=False)
    return 0


def _bytes(a: argparse.Namespace) -> int:
    import pandas as pd

    from ..adapt.miet import transfers
    from ..adapt.taps import depth

    model, data = _load(a)
    rows = transfers(model, data.test_set[0][0], depth(model) if a.k is None else a.k, a.gap)
    _print(pd.DataFrame([r.__dict__ for r in rows]), a.json)
    return 0
