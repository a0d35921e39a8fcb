"""Mixed-precision quantized supernets with LoRA (arXiv 2403.20080, reconstructed): train once, pick a subnet for
any BitOPs budget.

Layer 3 (orchestration) of craftlab. Modules: ``space`` (configurations, search space, budgets), ``layers``
(switchable LSQ fake-quant layers), ``lora`` (peft LoRA shared / per bit-width), ``model`` (the supernet:
configure, run, export, cost), ``build`` (``build_supernet``), ``train`` (sandwich rule, progressive bits),
``memory`` (training memory), ``store`` (checkpoints, the cached supernets), ``search`` (evolutionary search,
Pareto front), ``selection`` (the reported subnet: uniform unless mixed ones win held out over repeated
splits), ``cli`` (``craftlab supernet ...``).

Names load on first use (``craftlab.supernet.build_supernet``), so importing the package stays light; peft is
imported only when a supernet gets LoRA.

Example::

    from craftlab.supernet import build_supernet, train_supernet, search_budgets
    sn = build_supernet(model, data.calib, lora="per-bit")          # W{2,3,4,6,8} x A{4,6,8} per layer
    sn = train_supernet(sn, data, epochs=6).supernet                 # sandwich rule, progressive bits
    report = search_budgets(sn, data, ["4%", "5%"])                  # % of the FP32 model's BitOPs
    plain = sn.export(report.results[0].best["config"])              # QuantLinear layers, same outputs

What the paper states and what is reconstructed here (its code, search space, LoRA rank/placement, schedule and
search are not published):

* stated: a quantized mixed-precision supernet fine-tuned from a vision foundation model; operators resolution,
  feature size, width, depth, bit-widths compared by BitOPs reduction; LoRA with frozen base weights and a
  progressive strategy for memory; "selective" / "multiplex" LoRA against gradient conflict; ~95% BitOPs
  reduction without degradation (SAM on segmentation).
* reconstructed (standard choices): BitOPs = Σ MACs·b_w·b_a over Conv2d/Linear (unsearched layers, by default
  the patch embedding and the head, at 32x32 bits) + Σ attention-matmul MACs (q·kᵀ, attn·v, quantized at the
  activation bits of the block's qkv layer) · b_a² (``BITOPS_CONVENTION``); per-subnet BatchNorm re-estimated on
  the calibration images for CNNs (OFA); LoRA quantized with the weight without a second weight-sized tensor in
  the graph; the reported subnet is uniform unless mixed ones beat it by > 2 standard errors held out over 5
  random halves of the validation images;
  per-layer W/A bits from W{2,3,4,6,8} x A{4,6,8};
  LSQ step sizes per candidate bit-width (log-parametrized, MSE-initialized), symmetric signed grids, weights per
  output channel, inputs per tensor; LoRA rank 4 (alpha = rank) on every searchable Linear, the low-rank update
  quantized together with the weight (Q(W + sBA)); "multiplex" = one adapter per weight bit-width chosen by the
  layer's current bits; BigNAS sandwich rule (largest + 2 random + smallest, in-place distillation) with one
  AdamW step; progressive = bit sets widened downwards in three equal stages; structural operators = input
  resolution (position embedding resampled), the first d blocks, the first MLP units / heads after OFA-style
  importance sorting; OFA-style evolutionary search on the validation split with repair of over-budget children.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_NAMES: dict[str, str] = {
    "SearchSpace": ".space", "SubnetConfig": ".space", "parse_budget": ".space",
    "Supernet": ".model", "Resized": ".model", "build_supernet": ".build",
    "SupernetTrainResult": ".train", "train_supernet": ".train", "sandwich_step": ".train",
    "progressive_stages": ".train",
    "TrainingMemory": "..measure.memory", "measure_training_memory": "..measure.memory",
    "SavedTensorMeter": "..measure.memory",
    "SupernetSpec": ".store", "get_supernet": ".store", "save_supernet": ".store", "load_supernet": ".store",
    "SearchResult": ".search", "evolutionary_search": ".search", "search_budgets": ".search",
    "pareto_front": ".search", "evaluate_configs": ".search", "SearchReport": ".search",
    "step_memory": ".train", "BITOPS_CONVENTION": ".model", "select": ".search",
    "split_estimate": ".selection",
}

__all__ = [*_NAMES]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _NAMES)
