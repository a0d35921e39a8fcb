"""The Adapt tab's words: its introduction."""

from __future__ import annotations

__all__ = ["INTRO"]

INTRO = """**Adapt a frozen backbone** (LAST, MIET — issue 13). The zoo's vit-tiny (pretrained on mnist5k) adapts to
digits by: a **linear probe** on its final features; **LoRA** (rank 4 on qkv); **full** fine-tuning (± SAM);
**LAST**, a low-rank attention side network over the frozen blocks' tokens (the backbone runs without a graph, so
training memory is the side network's); **MIET**, the edge paradigm: a server sends each image's gathered features
once and the device trains a small attention adaptor on them. Memory is what training holds — tensors saved for
backward + gradients + optimizer state, measured on one batch of 64 — not the process's RSS. Bytes per image is
what a server sends a device per image (fine-tuning on the device: the image); the edge variants trade it away:
**LAST (g=2)** taps every second block, **MIET 8-/4-bit** sends quantized features. *What the papers claim*: LAST
trains in ≈ 30 % of PEFT's memory and 60 % of its time at *higher* accuracy; MIET adapts on the edge from
features at a fraction of the bytes. *What is measured here* (benchmark, 8 epochs, 3 seeds): LAST uses ~44 % of
LoRA's memory but is *less* accurate (−2.3 pts, not significant after Holm); MIET is far cheaper to train and to
feed but ~9 pts below LoRA. Rows marked **benchmark (reference)** come from `benchmarks/results/adapt.csv` (a
source checkout only); **live run** rows are trained here at small size on request (in the background, one at a
time; LoRA and full fine-tuning take longest) and cached under `$CRAFTLAB_HOME` — the table says which rows
were trained now and which were read from the cache, and the command that reproduces each."""
