"""The Supernet tab's words: its introduction."""

from __future__ import annotations

__all__ = ["INTRO"]

INTRO = """**One supernet, a subnet for any BitOPs budget** (mixed-precision supernet, issues 12 and 25).
A zoo model fine-tuned on digits becomes one quantized supernet whose every searchable layer runs at any of
W{2,3,4,6,8} × A{4,6,8}: **vit-tiny** with frozen base weights and one LoRA adapter per weight bit-width (its
attention matmuls q·kᵀ and attn·v quantized at the block's activation bits), or **resnet-tiny** trained on full
weights, each subnet scored with its **own BatchNorm statistics** re-estimated on the 128 calibration images.
Type a budget and press Enter: it goes to the core's evolutionary search (a budget searched before is a lookup,
any other one a short live search). The search ranks on the **validation** split and keeps the best *uniform*
subnet unless mixed ones beat it by more than 2 standard errors held out (chosen on one random half of the
validation images, compared on the other, 5 splits); test accuracy is shown beside it.

**BitOPs** = Σ Conv/Linear MACs · weight bits · activation bits (patch embedding / stem and head at 32 × 32)
+ Σ attention-matmul MACs · activation bits²; budgets are in **% of the FP32 model's BitOPs** (a bare number,
or `5%`), or absolute (`120M`, `1.2e8`). *What the paper claims*: ≈ 95 % BitOPs reduction (≤ 5 % of FP32)
without degradation. *What is measured here* (`benchmarks/results/supernet.md`, 2 seeds): uniform subnets at
4–5 % of FP32 lose no measurable test accuracy on vit-tiny, and the mixed-precision search adds nothing over them
(its top picks test lower); plain PTQ keeps attention in float and cannot go below ~9.6 %."""
