"""The Compose tab's words: its introduction."""

from __future__ import annotations

__all__ = ["INTRO"]

INTRO = """**Compose the methods** (issue 20: CraftLab's own study). Each paper measures its method alone; here the
steps are stacked on one compressed model — fine-tune with SAM (CrAFT), re-estimate BatchNorm statistics (CNNs),
compensate in closed form (QwT / QwT-v2) — at the compression setting where compensation has something to fix
(the claims ledger's endpoint: vit-tiny W3A3 RepQ-ViT, resnet-tiny W4A4); on vit-tiny, the mixed-precision
supernet's pick at 5 % of the FP32 BitOPs can replace that fixed setting. Every number is paired by fine-tuning
seed; the waterfall adds your ticked steps one at a time, each bar with its 95 % CI. The study's full reading —
which gains add up, which overlap, which step harms — is the `compose` section of `benchmarks/RESULTS.md` and
notebook 08."""
