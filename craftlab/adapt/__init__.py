"""Frozen-backbone adaptation: the backbone is a fixed feature extractor, only a small network trains.

- :mod:`.taps`: the intermediate token features z_0 … z_L of a frozen timm ViT (no autograd graph), and an
  on-disk feature cache that refuses entries made from other weights, data or transforms;
- :mod:`.side`: LAST's side network of low-rank self-attention (LSA) blocks, MIET's low-rank attention
  adaptor on Gather*, the linear probe;
- :mod:`.parallel`: K side networks with different learning rates / weight decays / ranks trained at once on
  one backbone pass per batch (``torch.func.vmap``), and the plain one-network trainer;
- :mod:`.miet`: the server/device split of MIET (Gather*, quantized transfer) and the bytes each method sends;
- :mod:`.memory`: what training holds (tensors saved for backward, gradients, optimizer state);
- :mod:`.baselines`: linear probe, LoRA on the backbone (HF ``peft``), full fine-tuning;
- :mod:`.methods`: the adaptation methods as a registry (``ADAPT_METHODS``), one module each with its config
  dataclass, and THE arms table ``ARMS`` derived from it;
- :mod:`.recipes`: ``adapt_model(model, data, method=...)``, one entry point for every registered method, and
  ``adapt_search``; :mod:`.steps`: one training step of any method and what it holds.

The study that compares the methods (``compare_methods``, ``kway_speedup``, ``adapt_curves``) is
:mod:`craftlab.studies.adapt`; :mod:`.compare` and :mod:`.curves` are its old paths, kept as re-exports.

LAST (Tang et al. 2024, arXiv 2402.04009) and MIET/MIST (Tang et al., CVPR 2025, arXiv 2406.17559) publish no
code; the side-network recurrence, the LSA block's insides and the adaptor are reconstructions, labelled
RECONSTRUCTION in :mod:`.side` and :mod:`.miet` and kept in one place each so they are easy to change.
"""
