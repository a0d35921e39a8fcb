"""The ``craftlab`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .threads import configure_threads

EXAMPLES = """\
examples:
  craftlab demo                                   # CrAFT on the embedded default (AdamW vs AdamW+SAM)
  craftlab pretrain --model all                   # (re)make the mnist5k-pretrained zoo models
  craftlab finetune --model vit-tiny --data digits --sam-rho 0.05 --epochs 8 --out runs/vit-sam
  craftlab compress --checkpoint runs/vit-sam --method wanda --sparsity 0.5 --json
  craftlab compress --checkpoint runs/vit-sam --pattern 2:4
  craftlab compress --checkpoint runs/vit-sam --w-bits 4 --a-bits 8
  craftlab compress --checkpoint runs/vit-sam --w-bits 4 --a-bits 4 --recipe repq --compensate qwt-v2
  craftlab compress --checkpoint runs/vit-sam --sparsity 0.5 --compensate qwt-v2   # CWAC of the pruning error
  craftlab sweep --checkpoint runs/vit-adamw runs/vit-sam --sparsities 0.5 0.7 --bits 8,8 4,4 --out sweep.csv
  craftlab sweep --checkpoint runs/vit-sam --methods magnitude --sparsities 0.5 --patterns --bits 6,6 4,4 \
      --recipe repq --compensate qwt qwt-v2 --out qwt.csv
  craftlab sweep --checkpoint runs/vit-adamw runs/vit-sam --engine ray --address 10.0.0.1:6379 --out sweep.csv
  craftlab sharpness --checkpoint runs/vit-sam --json
  craftlab landscape --checkpoint runs/vit-sam --kind plane --steps 21 --out plane.json    # + plane.html
  craftlab landscape --checkpoint runs/vit-sam --kind compression --w-bits 4 --a-bits 4 --out path.html
"""


def _bits(value: str) -> int | None:
    from .settings import parse_bits

    try:
        return parse_bits(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _bit_pair(value: str) -> tuple[int | None, int | None]:
    try:
        w, a = value.split(",")
        return _bits(w), _bits(a)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected W,A bits like 8,8 or 4,none; got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="craftlab", description="Compression-aware fine-tuning (CrAFT) lab.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"craftlab {__version__}")
    p.add_argument("--threads", default=None, metavar="N",
                   help="torch intra-op threads: a positive integer or 'auto' (default: $CRAFTLAB_THREADS, else 1 "
                        "for small models and one per core for large ones; see craftlab/threads.py)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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

    s = sub.add_parser("compress", help="prune and/or quantize a checkpoint and report accuracy")
    _compress_args(s)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", default=None, help="save the compressed model here (load it with "
                   "craftlab.load_compressed; `craftlab sharpness/landscape --checkpoint` read it too)")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    from .distributed.sweep_cli import add_parser as add_sweep_parser

    add_sweep_parser(sub, _bit_pair)

    s = sub.add_parser("sharpness", help="Hessian lambda_max, trace and eps-sharpness of a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    s.add_argument("--batch-size", type=int, default=128, help="probe batch: the first N training images (default 128)")
    s.add_argument("--rho", type=float, default=0.05, help="radius of the eps-sharpness ball")
    s.add_argument("--adaptive", action="store_true", help="ASAM's scale-invariant ball")
    s.add_argument("--samples", type=int, default=4, help="Hutchinson probes for the trace (default 4, as the app)")
    s.add_argument("--max-iter", type=int, default=10, help="Lanczos Hessian-vector products (default 10, as the app)")
    s.add_argument("--tol", type=float, default=1e-2, help="Lanczos relative tolerance (default 1e-2, as the app)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("landscape", help="loss landscape around a checkpoint: line, plane or compression slice")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--kind", default="plane", choices=["line", "plane", "compression"])
    s.add_argument("--steps", type=int, default=None, help="grid points per axis (line 51, plane 21, path 41)")
    s.add_argument("--distance", type=float, default=1.0, help="half-width of line/plane in filter-normalized units")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--surface", action="store_true", help="plane as a 3-D surface instead of contours")
    _compress_args(s)
    s.add_argument("--out", required=True, help="FILE.json or FILE.html; both are written")

    s = sub.add_parser("app", help="serve the CraftLab Gradio app (needs the 'app' extra)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)

    s = sub.add_parser("demo", help="the CrAFT demo on the embedded default (runs are cached)")
    s.add_argument("--models", nargs="+", default=["vit-tiny", "resnet-tiny"])
    s.add_argument("--data", default="digits")
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--sam-rho", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    return p


def _compress_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    s.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "random"])
    s.add_argument("--sparsity", type=float, default=0.0)
    s.add_argument("--scope", default=None, choices=["global", "layer", "row"])
    s.add_argument("--pattern", default=None, help="N:M, N kept of every M (e.g. 2:4); scored by --method")
    s.add_argument("--w-bits", default=None, help="2-8 or 16 (default: float)")
    s.add_argument("--a-bits", default=None, help="2-8 or 16 (default: float)")
    s.add_argument("--recalibrate-bn", action="store_true", help="re-estimate BatchNorm statistics after pruning")
    s.add_argument("--recipe", default="uniform", choices=["uniform", "repq"],
                   help="quantization recipe: uniform (Conv2d/Linear, default) or repq (RepQ-ViT: also the attention "
                        "matmuls, log-sqrt2 softmax, LayerNorm folding; timm ViTs only)")
    s.add_argument("--quant-method", default=None, choices=["minmax", "percentile", "mse", "repq"],
                   help="weight range method (default: minmax for --recipe uniform, repq for --recipe repq)")
    s.add_argument("--compensate", default=None, choices=["qwt", "qwt-v2"],
                   help="closed-form compensation fitted on the calibration set against the uncompressed model: "
                        "qwt (a linear side path per block) or qwt-v2 (a channel-wise affine per layer, folded)")


def _setting(a: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The compression setting of the command line (validated once, here) and the compress() kwargs."""
    from .settings import parse_bits

    quantizes = parse_bits(a.w_bits, "w_bits") is not None or parse_bits(a.a_bits, "a_bits") is not None
    prunes = bool(a.pattern) or (a.sparsity or 0) > 0
    if a.recipe != "uniform" and not quantizes:
        raise ValueError(f"--recipe {a.recipe} is a quantization recipe: give --w-bits and/or --a-bits")
    if a.compensate and not (quantizes or prunes):
        raise ValueError(f"--compensate {a.compensate} needs something to compensate: give --w-bits/--a-bits "
                         "(quantization) or --sparsity/--pattern (pruning)")
    from .settings import make_setting

    setting = make_setting(a.pattern or a.method, a.sparsity, a.w_bits, a.a_bits,
                           nm_score=a.method if a.pattern else "magnitude", recalibrate_bn=a.recalibrate_bn,
                           recipe=a.recipe, compensation=a.compensate)
    kwargs = setting.compress_kwargs()
    if a.quant_method is not None:
        kwargs["quant_method"] = a.quant_method
    if a.scope is not None and not a.pattern:
        kwargs["scope"] = a.scope
    return setting, kwargs


def _data_for(meta: dict[str, Any], model, name: str | None):
    from .data import load_data

    data = meta.get("data") or {}
    return load_data(name or data.get("name") or "digits", model=model, seed=data.get("seed", 0))


def cmd_pretrain(a: argparse.Namespace) -> int:
    from .models import SHIPPED_ZOO_DIR, zoo_names
    from .train.pretrain import pretrain

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
        print(f"{name} [{meta.get('label') or a.optimizer}]: test accuracy on {a.data} {m['test_accuracy']:.4f}, "
              f"{1000 * m['time_per_step_s']:.1f} ms/step -> {path}")
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    from .data import load_data
    from .evaluation import evaluate
    from .train.finetune import finetune
    from .train.pretrain import create_model

    data = load_data(a.data, model=create_model(a.model, pretrained=False))
    model = create_model(a.model, num_classes=data.num_classes, pretrained=not a.no_pretrained, seed=a.seed)
    res = finetune(model, data, optimizer=a.optimizer, lr=a.lr, epochs=a.epochs, sam_rho=a.sam_rho,
                   adaptive=a.adaptive, seed=a.seed, device=a.device, amp=a.amp, batch_size=a.batch_size,
                   progress=not a.quiet, sam_mode=a.sam_mode, sync_bn=a.sync_bn)
    from .distributed.ddp import current_world

    world = current_world(setup=False)
    main_rank = world is None or world.is_main  # under torchrun: rank 0 evaluates, saves and prints
    if main_rank:
        test = evaluate(res.model, data.test)
        res.metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    res.config["classes"] = data.classes
    path = res.save(a.out)  # written by rank 0, the others wait for it
    if main_rank:
        print(json.dumps({"checkpoint": str(path), "train_time_s": round(res.train_time_s, 2), **res.metrics}))
    return 0


def _load_uncompressed(path: str):
    """A checkpoint to compress: refused when it already holds a compressed model (compressing twice stacks)."""
    from .checkpoint import load_checkpoint, read_meta

    done = read_meta(path).get("compression")
    if done:
        raise ValueError(f"{path} already holds a compressed model ({done}); compress the checkpoint it came from "
                         "(inspect it with craftlab.load_compressed)")
    return load_checkpoint(path)


def cmd_compress(a: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .compression.pipeline import compress, compress_and_evaluate

    model = _load_uncompressed(a.checkpoint)
    data = _data_for(model.craftlab_meta, model, a.data)
    setting, settings = _setting(a)
    compressed = compress(model, calib=data.calib, **settings)  # once: evaluated, and saved with --out
    res = compress_and_evaluate(model, data, compressed=compressed, calib=data.calib, **settings)
    res.update(checkpoint=str(a.checkpoint), setting=setting.label())
    if a.out:
        save_checkpoint(compressed, a.out, {**model.craftlab_meta, "compression": settings,
                                            "metrics": {"test_accuracy": res["accuracy"]}})
        res["out"] = a.out
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{a.checkpoint} [{setting.describe()}]: accuracy {res['fp_accuracy']:.4f} -> {res['accuracy']:.4f} "
              f"(drop {res['accuracy_drop']:+.4f}); sparsity {res['sparsity_measured']:.3f}, "
              f"size {res['size_mb']:.3f} MB, {res['bitops'] / 1e9:.3f} GBitOPs")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from .distributed.sweep_cli import run

    return run(a, _load_uncompressed, _data_for)


def cmd_demo(a: argparse.Namespace) -> int:
    import pandas as pd

    from .checkpoint import load_checkpoint
    from .compression.sweep import settings_grid, sweep
    from .train.runs import RunSpec, get_run

    print("CrAFT demo: fine-tune each zoo model with AdamW and with AdamW+SAM (same schedule, same seed),\n"
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
        data = _data_for(model.craftlab_meta, model, None)
        frames.append(sweep(models, data, settings_grid(methods=["magnitude", "wanda"], sparsities=[0.5, 0.7],
                                                        patterns=["2:4"], bits=[(8, 8), (4, 8), (4, 4)]),
                            progress=not a.quiet, extra_columns=extra))
    df = pd.concat(frames)
    table = df.pivot_table(index="setting", columns="model", values="accuracy", sort=False)
    print("test accuracy (fraction):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    times = df.groupby("model")["train_time_s"].first()
    print("\nfine-tuning time (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in times.items()))
    print("\nNext: craftlab --help, and the notebooks in notebooks/.")
    return 0


def _probe_batch(a: argparse.Namespace):
    """The checkpoint's model and its data's probe batch (the first `--batch-size` training images, as in the
    app and the notebooks); a compressed checkpoint (``compress --out``) is probed as the compressed model."""
    from .compression.pipeline import load_compressed

    model = load_compressed(a.checkpoint)
    data = _data_for(model.craftlab_meta, model, a.data)
    return model, data, data.probe_batches(a.batch_size)[0]


def cmd_sharpness(a: argparse.Namespace) -> int:
    from .probes.sharpness import sharpness_summary

    model, _, batch = _probe_batch(a)
    res = sharpness_summary(model, batch, rho=a.rho, adaptive=a.adaptive, n_samples=a.samples,
                             max_iter=a.max_iter, tol=a.tol)
    res = {"checkpoint": str(a.checkpoint), "batch_size": len(batch[1]), "rho": a.rho, "adaptive": a.adaptive, **res}
    if a.json:
        print(json.dumps(res, default=float))
    else:
        print(f"{a.checkpoint}: loss {res['loss']:.4f}, lambda_max {res['lambda_max']:.4g}, "
              f"trace {res['trace']:.4g} ± {res['trace_stderr']:.2g}, eps-sharpness(rho={a.rho}) "
              f"{res['eps_sharpness']:.4g}  [{res['seconds']:.1f} s, {len(batch[1])} images]")
    return 0


def cmd_landscape(a: argparse.Namespace) -> int:
    from .compression.pipeline import compress
    from .probes import landscape
    from .viz import plots

    if a.kind != "compression" and (a.recipe != "uniform" or a.compensate or a.quant_method):
        raise ValueError(f"--recipe/--compensate/--quant-method apply to --kind compression, not --kind {a.kind}")
    setting, settings = _setting(a) if a.kind == "compression" else (None, {})
    if setting is not None:
        if setting.is_identity:
            raise ValueError("--kind compression needs a compression: --sparsity, --pattern, --w-bits or --a-bits")
        problem = setting.weight_path_problem()
        if problem:
            flag, fix = (("--recipe repq", "use --recipe uniform") if setting.recipe == "repq" else
                         ("--compensate qwt", "use --compensate qwt-v2 (folded into the layers)"))
            raise ValueError(f"--kind compression with {flag}: {problem}; {fix}")
    model, data, batch = _probe_batch(a)
    if a.kind == "line":
        res = landscape.line(model, batch, distance=a.distance, steps=a.steps or 51, seed=a.seed)
        fig = plots.line_figure({Path(a.checkpoint).name: res})
    elif a.kind == "plane":
        res = landscape.plane(model, batch, distance=a.distance, steps=a.steps or 21, seed=a.seed)
        fig = plots.plane_figure(res, kind="surface" if a.surface else "contour")
    else:
        compressed = compress(model, calib=data.calib, **settings)
        res = landscape.compression_path(model, compressed, batch, steps=a.steps or 41)
        fig = plots.compression_path_figure(res)
    out = Path(a.out)
    base = out.with_suffix("") if out.suffix in (".json", ".html") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(res.to_dict()))
    fig.write_html(str(base.with_suffix(".html")), include_plotlyjs=True)
    print(f"wrote {base.with_suffix('.json')} and {base.with_suffix('.html')}")
    return 0


def cmd_app(a: argparse.Namespace) -> int:
    try:
        launch = importlib.import_module("craftlab_app.ui").launch
    except ImportError as err:
        raise RuntimeError(f"the app needs the 'app' extra (pip install 'craftlab[app]'): {err}") from err
    launch(host=a.host, port=a.port)
    return 0


COMMANDS = {"pretrain": cmd_pretrain, "finetune": cmd_finetune, "compress": cmd_compress, "sweep": cmd_sweep,
            "sharpness": cmd_sharpness, "landscape": cmd_landscape, "demo": cmd_demo, "app": cmd_app}


# Commands that live with their paper's package: each module has ``add_parser(subparsers)`` and ``run(args)``
# and imports nothing heavy at module level (building the parser must stay fast).
EXTENSIONS = ("craftlab.transforms.cli", "craftlab.supernet.cli", "craftlab.adapt.cli", "craftlab.analysis.compose_cli")


def _extensions() -> dict[str, Any]:
    found = {}
    for name in EXTENSIONS:
        try:
            found[name] = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a missing dependency of the extension, not the extension itself
                raise
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    runners = {}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for mod in _extensions().values():
        before = set(sub.choices)
        mod.add_parser(sub)
        runners.update({cmd: mod.run for cmd in set(sub.choices) - before})
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        configure_threads(args.threads, model=getattr(args, "model", None))
        return (COMMANDS.get(args.command) or runners[args.command])(args)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as err:
        print(f"craftlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
