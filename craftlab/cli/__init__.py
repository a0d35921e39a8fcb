"""The ``craftlab`` command line: one module per command group, each importing its paper package only when it runs.

``craftlab --help`` (and every ``craftlab COMMAND --help``) builds the parser from the group modules alone: none of
them imports torch, pandas or a paper package at module level (``tests/test_cli.py`` checks it). A group module
has ``add_parser(subparsers)`` and ``run(args)``; add a command by adding a module to ``GROUPS``.

Errors a user can cause (ValueError, TypeError, RuntimeError, FileNotFoundError) print one line
``craftlab COMMAND: error: ...`` and exit with status 2.

Example::

    from craftlab.cli import main
    main(["compress", "--checkpoint", "runs/vit-sam", "--w-bits", "4", "--a-bits", "8", "--json"])
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from ._args import Formatter, fill_help

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


# command group modules, in the order of ``craftlab --help``
GROUPS = ("train", "compress", "sweep", "probe", "compose", "transforms", "supernet", "adapt", "serve")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    """The ``craftlab`` parser and the runner of each command (imports no torch)."""
    from .. import __version__

    p = argparse.ArgumentParser(prog="craftlab", description="Compression-aware fine-tuning (CrAFT) lab.",
                                epilog=EXAMPLES, formatter_class=Formatter)
    p.add_argument("--version", action="version", version=f"craftlab {__version__}")
    p.add_argument("--threads", default=None, metavar="N",
                   help="torch intra-op threads: a positive integer or 'auto' (default: $CRAFTLAB_THREADS, else 1 "
                        "for small models and one per core for large ones; see craftlab/threads.py)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    runners: dict[str, Callable[[argparse.Namespace], int]] = {}
    for group in GROUPS:
        mod: Any = importlib.import_module(f"{__name__}.{group}")
        before = set(sub.choices)
        mod.add_parser(sub)
        runners.update({cmd: mod.run for cmd in set(sub.choices) - before})
    fill_help(p)
    return p, runners


def main(argv: list[str] | None = None) -> int:
    """Run ``craftlab`` with `argv` (default: ``sys.argv[1:]``); the exit status."""
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        from ..threads import configure_threads

        configure_threads(args.threads, model=getattr(args, "model", None))
        return runners[args.command](args)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as err:
        print(f"craftlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
