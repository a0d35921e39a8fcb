"""Benchmark: training memory of one supernet sandwich step on the ViT-B-sized stand-in (timm vit_base_patch16_224,
random init, 224 px, 10 classes) at two batch sizes: per-bit LoRA, shared LoRA and full weights, and per-bit LoRA
through the previous path that quantized a materialized ``W + s·B·A`` (kept by autograd for backward).

Memory as :mod:`craftlab.measure.memory` counts it: saved-for-backward tensors (peak bytes alive, parameters not
counted) + gradients + AdamW state, in MiB (2^20 bytes). Run: ``python -m benchmarks.bench_supernet_memory``
(writes benchmarks/results/supernet_memory.md; a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from craftlab.studies import supernet as study
from craftlab.supernet.lora import QuantLoraLinear

RESULTS = Path(__file__).parent / "results"
BATCHES = (2, 8)


@contextlib.contextmanager
def old_lora_path():
    """Quantize the materialized W + s·B·A, as the supernet's LoRA layers did before (the STE keeps the sum)."""
    def forward(self, x, *args, **kwargs):
        base = self.get_base_layer()
        w, b = base.quantized_weight(self.delta())
        return F.linear(base.quantize_input(x), w, b)

    saved = QuantLoraLinear.forward
    QuantLoraLinear.forward = forward
    try:
        yield
    finally:
        QuantLoraLinear.forward = saved


def main(batches: tuple[int, ...] = BATCHES) -> None:
    mib = 2**20
    lines = ["**Training memory, ViT-B-sized stand-in** (vit_base_patch16_224, random init, 224 px; one sandwich step, "
             "largest + smallest subnet; saved tensors peak + gradients + AdamW state; MiB = 2^20 bytes; seed 0; "
             f"torch {torch.__version__}, CPU)", "",
             "| batch | variant | saved (MiB) | grads (MiB) | AdamW (MiB) | total (MiB) | wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for batch in batches:
        runs = [("per-bit LoRA", "per-bit", contextlib.nullcontext), ("shared LoRA", "shared", contextlib.nullcontext),
                ("full weights", "none", contextlib.nullcontext),
                ("per-bit LoRA, previous path (W + sBA kept)", "per-bit", old_lora_path)]
        for label, mode, ctx in runs:
            t0 = time.perf_counter()
            with ctx():
                m = study.standin_memory(batch=batch, modes=(mode,), use_cache=False)[mode]
            lines.append(f"| {batch} | {label} | {m['saved_bytes'] / mib:.0f} | {m['grad_bytes'] / mib:.0f} | "
                         f"{m['optimizer_bytes'] / mib:.0f} | {m['total_bytes'] / mib:.0f} | "
                         f"{time.perf_counter() - t0:.0f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "supernet_memory.md").write_text(text + "\n")


if __name__ == "__main__":
    main(tuple(int(b) for b in sys.argv[1:]) or BATCHES)
