"""``craftlab pretrain``, ``craftlab finetune`` and ``craftlab demo``: making runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._args import data_for


def add_parser(sub: Any) -> None:
    """Add pretrain, finetune and demo."""
    s = sub.add_parser("pretrain", help="pretrain zoo models on the source task (mnist5k), optionally with SAM "
                       "and a train-time transform folded after training (SNT's comparison)")
    s.add_argument("--model", default="all", help="zoo model name or 'all' (default)")
    s.add_argument("--data", default="mnist5k", help="source dataset (default mnist5k)")
    s.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"],
                   help="adamw: the zoo's recipe (default); adam: SNT's baseline")
    s.add_argument("--lr", type=float, default=None, help="default: the zoo's recipe")
    s.add_argument("--epochs", type=int, default=None, help="default: the zoo's recipe")
    s.add_argument("--sam-rho", type=float, default=0.0, help="SAM radius; 0 = no SAM")
    s.add_argument("--transform", default=None,
                   help="train-time transform, folded after training: expand, repvgg, weight-noise; parameters as "
                        "NAME:key=value (expand:rate=4); `craftlab transforms` lists them")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="folder (default: $CRAFTLAB_HOME/zoo/<model> for the zoo recipe, "
                   "else $CRAFTLAB_HOME/pretrain/<run key>)")
    s.add_argument("--ship", action="store_true", help="write into the package's zoo folder (maintainers)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("finetune", help="fine-tune a model, optionally with SAM/ASAM (the CrAFT recipe)")
    s.add_argument("--model", default="vit-tiny", help="zoo name or timm name (default vit-tiny)")
    s.add_argument("--data", default="digits", help="dataset name (default digits)")
    s.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--sam-rho", type=float, default=0.0, help="SAM radius; 0 = plain fine-tuning")
    s.add_argument("--sam-mode", default="sam", help="sam (default), looksam:K, random:F, msam, rwp (sigma=rho)")
    s.add_argument("--adaptive", action="store_true", help="ASAM (use a ~10x larger rho)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--amp", default=None, choices=["bf16", "fp16"])
    s.add_argument("--sync-bn", action="store_true", help="under torchrun: BatchNorm with the global batch's "
                   "statistics (equals one process); default: per-replica statistics (docs/scale_out.md)")
    s.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    s.add_argument("--out", required=True, help="checkpoint folder to write")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("demo", help="the CrAFT demo on the embedded default (runs are cached)")
    s.add_argument("--models", nargs="+", default=["vit-tiny", "resnet-tiny"])
    s.add_argument("--data", default="digits")
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--sam-rho", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--json", action="store_true", help="print the table as JSON records")


def cmd_pretrain(a: argparse.Namespace) -> int:
    from ..models import SHIPPED_ZOO_DIR, zoo_names
    from ..train.pretrain import pretrain

    recipe = a.optimizer == "adamw" and not a.sam_rho and a.transform is None and a.data == "mnist5k"
    if a.ship and not recipe:
        raise ValueError("--ship writes the zoo's foundation: only with the zoo recipe (adamw on mnist5k, no "
                         "--sam-rho, no --transform)")
    names = zoo_names() if a.model == "all" else [a.model]
    for name in names:
        out = a.out if a.out and len(names) == 1 else (SHIPPED_ZOO_DIR / name if a.ship else None)
        path = pretrain(name, data=a.data, optimizer=a.optimizer, lr=a.lr, epochs=a.epochs, sam_rho=a.sam_rho,
                        transform=a.transform, seed=a.seed, out=out, progress=not a.quiet)
        meta = json.loads((Path(path) / "craftlab.json").read_text())
        m = meta["metrics"]
        if a.json:
            print(json.dumps({"model": name, "label": meta.get("label") or a.optimizer, "checkpoint": str(path),
                              **m}))
        else:
            print(f"{name} [{meta.get('label') or a.optimizer}]: test accuracy on {a.data} "
                  f"{m['test_accuracy']:.4f}, {1000 * m['time_per_step_s']:.1f} ms/step -> {path}")
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    from ..data import load_data
    from ..evaluation import evaluate
    from ..train.finetune import finetune
    from ..train.pretrain import create_model

    data = load_data(a.data, model=create_model(a.model, pretrained=False))
    model = create_model(a.model, num_classes=data.num_classes, pretrained=not a.no_pretrained, seed=a.seed)
    res = finetune(model, data, optimizer=a.optimizer, lr=a.lr, epochs=a.epochs, sam_rho=a.sam_rho,
                   adaptive=a.adaptive, seed=a.seed, device=a.device, amp=a.amp, batch_size=a.batch_size,
                   progress=not a.quiet, sam_mode=a.sam_mode, sync_bn=a.sync_bn)
    from ..train.ddp import current_world

    world = current_world(setup=False)
    main_rank = world is None or world.is_main  # under torchrun: rank 0 evaluates, saves and prints
    if main_rank:
        test = evaluate(res.model, data.test)
        res.metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    res.config["classes"] = data.classes
    path = res.save(a.out)  # written by rank 0, the others wait for it
    if main_rank:
        out = {"checkpoint": str(path), "train_time_s": round(res.train_time_s, 2), **res.metrics}
        if a.json:
            print(json.dumps(out))
        else:
            print(f"{path}: test accuracy {out['test_accuracy']:.4f} (loss {out['test_loss']:.4f}), trained in "
                  f"{out['train_time_s']:.1f} s")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    import pandas as pd

    from ..checkpoint import load_checkpoint
    from ..distributed.sweep import settings_grid, sweep
    from ..train.runs import RunSpec, get_run

    say = (lambda *_: None) if a.json else print
    say("CrAFT demo: fine-tune each zoo model with AdamW and with AdamW+SAM (same schedule, same seed),\n"
          "then prune and quantize without retraining. Runs are cached under $CRAFTLAB_HOME/runs.\n")
    frames = []
    for name in a.models:
        models, extra = {}, {}
        for rho in (0.0, a.sam_rho):
            spec = RunSpec(model=name, data=a.data, epochs=a.epochs, sam_rho=rho, seed=a.seed)
            path = get_run(spec, progress=not a.quiet)
            model = load_checkpoint(path)
            models[f"{name} {spec.arm}"] = model
            extra[f"{name} {spec.arm}"] = {"arm": spec.arm,
                                           "train_time_s": sum(h["time_s"] for h in model.craftlab_meta["history"])}
        data = data_for(model.craftlab_meta, model, None)
        frames.append(sweep(models, data, settings_grid(methods=["magnitude", "wanda"], sparsities=[0.5, 0.7],
                                                        patterns=["2:4"], bits=[(8, 8), (4, 8), (4, 4)]),
                            progress=not a.quiet, extra_columns=extra))
    df = pd.concat(frames)
    table = df.pivot_table(index="setting", columns="model", values="accuracy", sort=False)
    if a.json:
        print(df.to_json(orient="records"))
        return 0
    print("test accuracy (fraction):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    times = df.groupby("model")["train_time_s"].first()
    print("\nfine-tuning time (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in times.items()))
    print("\nNext: craftlab --help, and the notebooks in notebooks/.")
    return 0


COMMANDS = {"pretrain": cmd_pretrain, "finetune": cmd_finetune, "demo": cmd_demo}


def run(a: argparse.Namespace) -> int:
    return COMMANDS[a.command](a)
