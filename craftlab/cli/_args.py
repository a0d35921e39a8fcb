"""Plumbing shared by the command groups: one spelling per concept, the help text of common options, the parsers of
bits, and the compression setting of the command line (validated once, here). Imports nothing heavy."""

from __future__ import annotations

import argparse
from typing import Any

from .. import settings
from ..registry import QUANT_RECIPES
from ..settings import COMPENSATIONS, DEFAULT_RECIPE, PRUNE_METHODS, SCOPES

# One spelling per concept: the help of options that several commands share. An option that a command adds
# without help gets the text here (``fill_help``); ``tests/test_cli.py`` checks that every option has help.
GLOSSARY = {
    "--model": "zoo name (vit-tiny, resnet-tiny) or a timm model name",
    "--data": "dataset name: digits, mnist5k (offline) or a torchvision dataset / image folder",
    "--checkpoint": "a checkpoint folder (craftlab finetune --out, or a cached run)",
    "--epochs": "training epochs",
    "--lr": "learning rate (default: the method's recipe)",
    "--batch-size": "batch size (default: the recipe's)",
    "--seed": "random seed (weights init, data order, calibration sample)",
    "--seeds": "random seeds, one run each (paired across arms)",
    "--device": "cpu, cuda, cuda:N or auto",
    "--out": "where to write the result",
    "--json": "print one JSON object instead of text",
    "--quiet": "no progress bar",
    "--optimizer": "the base optimizer",
    "--weight-decay": "weight decay of the optimizer",
    "--amp": "mixed precision on CUDA (bf16 or fp16 with a gradient scaler)",
    "--host": "interface to serve on",
    "--port": "port to serve on",
    "--models": "model names",
    "--sam-rho": "SAM radius; 0 = no SAM",
    "--lora-rank": "rank of the LoRA adapters",
}


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; an option's default is shown after its help unless the help names it already
    (or there is none: a flag, or an option whose absence means "not used")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == argparse.SUPPRESS
                or default == [] or not action.option_strings
                or action.nargs == 0):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})".replace("%", "%%")


def fill_help(parser: argparse.ArgumentParser) -> None:
    """Give every option of `parser` and its subcommands a help text (from ``GLOSSARY`` when it has none) and the
    formatter that shows defaults."""
    parser.formatter_class = Formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                fill_help(sub)
        elif action.help is None and action.option_strings:
            long = max(action.option_strings, key=len)
            if long in GLOSSARY:
                action.help = GLOSSARY[long]


def old_spelling(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept `old` (an earlier spelling) for the option `new` already added to `parser`, without listing it in the
    help: one spelling per concept is shown, scripts written for the old one keep working."""
    action = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=action.dest, type=action.type, nargs=action.nargs, choices=action.choices,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def bits(value: str) -> int | None:
    """``argparse`` type of one bit-width: ``settings.parse_bits`` (2-8, 16, or none/fp for float)."""
    from ..settings import parse_bits

    try:
        return parse_bits(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def bit_pair(value: str) -> tuple[int | None, int | None]:
    """``argparse`` type of a ``W,A`` pair such as ``8,8`` or ``4,none``."""
    try:
        w, a = value.split(",")
        return bits(w), bits(a)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected W,A bits like 8,8 or 4,none; got {value!r}") from None


def compress_args(s: argparse.ArgumentParser) -> None:
    """The options of one compression setting (``compress`` and ``landscape --kind compression``)."""
    s.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    s.add_argument("--method", default="magnitude", choices=PRUNE_METHODS, help="pruning score")
    s.add_argument("--sparsity", type=float, default=0.0, help="fraction of weights pruned (0 = no pruning)")
    s.add_argument("--scope", default=None, choices=SCOPES,
                   help="where sparsity is counted (default: the method's: global for magnitude/random, row for "
                        "wanda)")
    s.add_argument("--pattern", default=None, help="N:M, N kept of every M (e.g. 2:4); scored by --method")
    s.add_argument("--w-bits", default=None, help="weight bits: 2-8 or 16 (default: float)")
    s.add_argument("--a-bits", default=None, help="activation bits: 2-8 or 16 (default: float)")
    s.add_argument("--recalibrate-bn", action="store_true",
                   help="re-estimate BatchNorm statistics after the whole compression (pruning and quantization)")
    methods = settings.QUANT_METHODS  # the registry's recipes now, a recipe registered by user code included
    s.add_argument("--recipe", default=DEFAULT_RECIPE, choices=settings.RECIPES, help=recipe_help())
    s.add_argument("--quant-method", default=None, choices=sorted({m for ms in methods.values() for m in ms}),
                   help="weight range method (default: " + ", ".join(
                       f"{ms[0]} for --recipe {r}" for r, ms in methods.items()) + ")")
    s.add_argument("--compensate", default=None, choices=COMPENSATIONS,
                   help="closed-form compensation fitted on the calibration set against the uncompressed model: "
                        "qwt (a linear side path per block) or qwt-v2 (a channel-wise affine per layer, folded)")


def setting_of(a: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The compression setting of the command line (validated once, here) and the compress() kwargs."""
    from ..settings import make_setting, parse_bits

    quantizes = parse_bits(a.w_bits, "w_bits") is not None or parse_bits(a.a_bits, "a_bits") is not None
    prunes = bool(a.pattern) or (a.sparsity or 0) > 0
    if a.recipe != DEFAULT_RECIPE and not quantizes:
        raise ValueError(f"--recipe {a.recipe} is a quantization recipe: give --w-bits and/or --a-bits")
    if a.compensate and not (quantizes or prunes):
        raise ValueError(f"--compensate {a.compensate} needs something to compensate: give --w-bits/--a-bits "
                         "(quantization) or --sparsity/--pattern (pruning)")
    if a.scope is not None and a.pattern:
        raise ValueError("--scope applies to --sparsity pruning; an N:M --pattern is counted per group of M")
    chosen = make_setting(a.pattern or a.method, a.sparsity, a.w_bits, a.a_bits,
                          nm_score=a.method if a.pattern else "magnitude", recalibrate_bn=a.recalibrate_bn,
                          recipe=a.recipe, compensation=a.compensate, scope=a.scope, quant_method=a.quant_method)
    return chosen, chosen.compress_kwargs()


def data_for(meta: dict[str, Any], model: Any, name: str | None) -> Any:
    """The dataset a checkpoint was fine-tuned on (or `name`), prepared for `model`."""
    from ..data import load_data

    data = meta.get("data") or {}
    return load_data(name or data.get("name") or "digits", model=model, seed=data.get("seed", 0))


def load_uncompressed(path: str) -> Any:
    """A checkpoint to compress: refused when it already holds a compressed model (compressing twice stacks)."""
    from ..checkpoint import load_checkpoint, read_meta

    done = read_meta(path).get("compression")
    if done:
        raise ValueError(f"{path} already holds a compressed model ({done}); compress the checkpoint it came from "
                         "(inspect it with craftlab.load_compressed)")
    return load_checkpoint(path)


def recipe_help() -> str:
    """The ``--recipe`` help, from the registry: each recipe's name, label and blurb (the default first).

    >>> recipe_help().startswith("quantization recipe (default uniform): uniform (")
    True
    """
    parts = [f"{name} ({how.label}: {how.blurb})" if how.label != name else f"{name} ({how.blurb})"
             for name, how in ((n, QUANT_RECIPES.get(n)) for n in QUANT_RECIPES.ordered())]
    return f"quantization recipe (default {DEFAULT_RECIPE}): " + "; ".join(parts)
