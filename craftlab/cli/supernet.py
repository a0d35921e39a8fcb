"""``craftlab supernet train ...`` and ``craftlab supernet search --budget ...``.

Wire into the main parser with ``add_parser(subparsers)`` and dispatch ``args.command == "supernet"`` to
``run(args)``; errors are ValueError / CheckpointError with one line naming the problem. Importing this module does not
import torch.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._args import old_spelling

EXAMPLES = """\
examples:
  craftlab supernet train --model vit-tiny --lora per-bit                # cached in $CRAFTLAB_HOME/supernets
  craftlab supernet train --lora per-bit shared none --seeds 0 1 2       # several supernets, each cached
  craftlab supernet train --depths 2,3,4 --w-bits-choices 8 --a-bits-choices 8           # an operator-study supernet
  craftlab supernet train --preset notebook                              # everything notebooks/05 uses
  craftlab supernet search --budget 4% --budget 3%                       # % of the FP32 model's BitOPs
  craftlab supernet search --checkpoint runs/supernet --budget 90M --json
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,4,8; got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,1.5,2; got {text!r}") from None


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit-tiny", help="base model: zoo or timm name (default vit-tiny)")
    p.add_argument("--data", default="digits", help="dataset (default digits)")
    p.add_argument("--base-epochs", type=int, default=8, help="fine-tuning epochs of the base run (default 8)")
    p.add_argument("--base-sam-rho", type=float, default=0.0, help="SAM radius of the base run (0: AdamW)")
    p.add_argument("--lora", nargs="+", default=["per-bit"], choices=["per-bit", "shared", "none"],
                   help="LoRA per weight bit-width, one shared LoRA, or none (full-weight training)")
    p.add_argument("--lora-rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--w-bits-choices", type=_ints, default=(2, 3, 4, 6, 8),
                   help="weight bit-widths the search may pick per layer (default 2,3,4,6,8)")
    p.add_argument("--a-bits-choices", type=_ints, default=(4, 6, 8),
                   help="activation bit-widths the search may pick per layer (default 4,6,8)")
    p.add_argument("--resolutions", type=_ints, default=None, help="input resolutions, e.g. 21,28 (ViT: multiples "
                                                                   "of the patch size)")
    p.add_argument("--depths", type=_ints, default=None, help="numbers of blocks kept, e.g. 2,3,4")
    p.add_argument("--mlp-ratios", type=_floats, default=None, help="MLP hidden / embedding width, e.g. 1,1.5,2")
    p.add_argument("--heads-choices", type=_ints, default=None, help="attention heads kept, e.g. 2,3,4")
    for old, new in (("--rank", "--lora-rank"), ("--w-bits", "--w-bits-choices"), ("--a-bits", "--a-bits-choices"),
                     ("--heads", "--heads-choices")):
        old_spelling(p, old, new)
    p.add_argument("--epochs", type=int, default=6, help="supernet training epochs (default 6)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of LoRA (default 2e-3)")
    p.add_argument("--n-random", type=int, default=2, help="random subnets per sandwich step (default 2)")
    p.add_argument("--no-progressive", action="store_true", help="all bit-widths from the first step")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``supernet`` (with ``train`` and ``search``) to the craftlab command's subparsers."""
    p = subparsers.add_parser("supernet", help="mixed-precision supernets with LoRA: train once, search any budget",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="supernet_command", metavar="SUBCOMMAND")
    t = sub.add_parser("train", help="train (or fetch from the cache) supernets", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _spec_args(t)
    t.add_argument("--preset", choices=["notebook"], default=None,
                   help="train every supernet of a preset (notebook: what notebooks/05_supernet uses)")
    t.add_argument("--out", default=None, help="also save the (single) trained supernet to this folder")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    s = sub.add_parser("search", help="evolutionary search of the best subnet per BitOPs budget", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _spec_args(s)
    s.add_argument("--checkpoint", default=None, help="a supernet checkpoint folder (instead of the spec options)")
    s.add_argument("--budget", action="append", required=True,
                   help="BitOPs budget: 1.2e8, 120M, 1.5G or a percentage of FP32 like 4%% (repeat for several)")
    s.add_argument("--population", type=int, default=16, help="population size (default 16)")
    s.add_argument("--generations", type=int, default=6, help="generations (default 6)")
    s.add_argument("--split", default="val", choices=["val", "test"], help="split the search evaluates on")
    s.add_argument("--bn", default="subnet", choices=["subnet", "shared"],
                   help="BatchNorm statistics of each subnet (CNNs): re-estimated for it on the calibration images "
                        "(default) or the shared ones training left")
    s.add_argument("--margin-se", type=float, default=2.0,
                   help="report a mixed subnet only if mixed ones beat the best uniform one by more than this "
                        "many standard errors, held out over 5 random halves of the validation images (default 2; "
                        "0: the most accurate one)")
    s.add_argument("--out", default=None, help="write the results as JSON to this file")
    s.add_argument("--json", action="store_true", help="print JSON")
    return p


def _specs(args: argparse.Namespace) -> list[Any]:
    from ..supernet.store import SupernetSpec

    return [SupernetSpec(model=args.model, data=args.data, base_epochs=args.base_epochs, base_sam_rho=args.base_sam_rho,
                         lora=lora, rank=args.lora_rank, w_bits=args.w_bits_choices, a_bits=args.a_bits_choices,
                         resolutions=args.resolutions, depths=args.depths, mlp_ratios=args.mlp_ratios,
                         heads=args.heads_choices, epochs=args.epochs, lr=args.lr, n_random=args.n_random,
                         progressive=not args.no_progressive, seed=seed)
            for lora in args.lora for seed in args.seeds]


def _train(args: argparse.Namespace) -> int:
    from ..supernet.space import check_candidates
    from ..supernet.store import get_supernet, load_supernet, read_supernet_meta, save_supernet

    if args.preset == "notebook":
        from ..studies.supernet import prepare_notebook

        prepare_notebook(progress=not args.quiet)
        return 0
    check_candidates(args.w_bits_choices, "--w-bits-choices")
    check_candidates(args.a_bits_choices, "--a-bits-choices")
    specs = _specs(args)
    if args.out and len(specs) != 1:
        raise ValueError(f"--out needs exactly one supernet, this command trains {len(specs)}")
    rows = []
    for spec in specs:
        path = get_supernet(spec, progress=not args.quiet and not args.json)
        meta = read_supernet_meta(path)
        if args.out:
            save_supernet(load_supernet(path), args.out, {k: v for k, v in meta.items() if k not in ("build", "space")})
            path = args.out
        mem = meta.get("memory") or {}
        hist = meta.get("history") or [{}]
        rows.append({"path": str(path), "spec": meta.get("spec"), "train_time_s": meta.get("train_time_s"),
                     **meta.get("metrics", {}), "val_accuracy_largest": hist[-1].get("val_accuracy_largest"),
                     "val_accuracy_smallest": hist[-1].get("val_accuracy_smallest"),
                     "memory_mib": mem.get("total_bytes", 0) / 2**20})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        s = r["spec"]
        print(f"{s['model']} lora={s['lora']} {'progressive' if s['progressive'] else 'flat'} seed {s['seed']}: "
              f"test accuracy largest {r.get('test_accuracy_largest', float('nan')):.3f}, smallest "
              f"{r.get('test_accuracy_smallest', float('nan')):.3f}; trained in {r['train_time_s']:.0f} s; "
              f"training memory {r['memory_mib']:.1f} MiB\n  -> {r['path']}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..data import load_data
    from ..supernet.model import BITOPS_CONVENTION
    from ..supernet.search import evaluate_configs, search_budgets
    from ..supernet.store import get_supernet, load_supernet

    if args.checkpoint:
        sn = load_supernet(args.checkpoint)
        meta = getattr(sn, "craftlab_meta", {})
        data_name = (meta.get("spec") or {}).get("data", args.data)
    else:
        specs = _specs(args)
        if len(specs) != 1:
            raise ValueError("search one supernet at a time: give one --lora and one --seeds value")
        sn, data_name = load_supernet(get_supernet(specs[0], progress=not args.json)), specs[0].data
    data = load_data(data_name, model=sn.net)
    report = search_budgets(sn, data, args.budget, split=args.split, population=args.population,
                            generations=args.generations, seed=args.seeds[0], bn=args.bn, margin_se=args.margin_se)
    fp32 = report.references["FP32"]
    tests = evaluate_configs(sn, data, [r.best["config"] for r in report.results], split="test", bn=args.bn)
    rows = [{"budget": r.budget, "budget_pct_fp32": 100 * r.budget / fp32, "label": r.best["label"],
             "bitops": r.best["bitops"], "bitops_pct_fp32": 100 * r.best["bitops"] / fp32,
             f"{args.split}_accuracy": r.best["accuracy"], "test_accuracy": t["accuracy"], "size_mb": r.best["size_mb"],
             "config": r.best["config"].to_dict(), "layers": list(sn.space.layers), "rule": r.rule}
            for r, t in zip(report.results, tests)]
    out = {"results": rows, "references": report.references, "bitops_convention": BITOPS_CONVENTION,
           "time_s": report.time_s,
           "pareto": [{"bitops": p["bitops"], "accuracy": p["accuracy"], "label": p["label"]} for p in report.pareto],
           "cache": report.cache_path}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"FP32 reference: {fp32:.4g} BitOPs; W8A8: {report.references['W8A8']:.4g}; "
          f"searched in {report.time_s:.0f} s\n  ({BITOPS_CONVENTION})")
    for r in rows:
        bits = " ".join(f"{w}/{a}" for w, a in zip(r["config"]["w_bits"], r["config"]["a_bits"]))
        print(f"budget {r['budget']:.4g} ({r['budget_pct_fp32']:.2f}% of FP32): {r['label']}, "
              f"{r['bitops']:.4g} BitOPs ({r['bitops_pct_fp32']:.2f}%), {args.split} accuracy "
              f"{r[f'{args.split}_accuracy']:.3f}, test accuracy {r['test_accuracy']:.3f}\n"
              f"  W/A bits per layer: {bits}\n  selection: {r['rule']}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch ``craftlab supernet train|search``."""
    if getattr(args, "supernet_command", None) == "train":
        return _train(args)
    if getattr(args, "supernet_command", None) == "search":
        return _search(args)
    raise ValueError("give a subcommand: craftlab supernet train ... or craftlab supernet search --budget ...")
