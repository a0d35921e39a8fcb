"""``craftlab compress``: one compression setting of a checkpoint, evaluated (and saved with ``--out``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._args import compress_args, data_for, load_uncompressed, setting_of


def add_parser(sub: Any) -> None:
    """Add compress."""
    s = sub.add_parser("compress", help="prune and/or quantize a checkpoint and report accuracy")
    compress_args(s)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", default=None, help="save the compressed model here (load it with "
                   "craftlab.load_compressed; `craftlab sharpness/landscape --checkpoint` read it too)")
    s.add_argument("--json", action="store_true", help="print one JSON object")



def cmd_compress(a: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint
    from ..compression.pipeline import compress, compress_and_evaluate

    model = load_uncompressed(a.checkpoint)
    data = data_for(model.craftlab_meta, model, a.data)
    setting, settings = setting_of(a)
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


def run(a: argparse.Namespace) -> int:
    return cmd_compress(a)
