"""CraftLab: compression-aware fine-tuning (CrAFT) of vision models, and why flat minima compress well.

Public API (everything a notebook or the app needs)::

    data = craftlab.load_data("digits")                       # offline bundle: .train .val .test .calib
    model = craftlab.create_model("vit-tiny", num_classes=10)  # mnist5k-pretrained zoo model, new head
    res = craftlab.finetune(model, data, sam_rho=0.05)         # CrAFT: same schedule + SAM
    pruned = craftlab.prune(res.model, 0.5, method="wanda", calib=data.calib)
    q = craftlab.quantize(res.model, w_bits=4, a_bits=8, calib=data.calib)
    craftlab.evaluate(q, data.test)                            # {"accuracy", "loss", "n"}

``import craftlab`` is light: every name below is imported on first use (PEP 562), so a script that
needs only the settings or the CLI's help does not pay for torch, pandas or plotly. The layers are
described in ARCHITECTURE.md: ``train/`` (SAM, fine-tuning, pretraining, cached runs), ``compression/``
(pruning, quantization, the prune-then-quantize pipeline, sweeps), ``probes/`` (Hessian, sharpness,
landscapes), ``analysis/`` (statistics, multi-run experiments), ``viz/`` (figures, widgets).
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_NAMES: dict[str, str] = {
    "CheckpointError": ".checkpoint", "load_checkpoint": ".checkpoint", "read_meta": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "Setting": ".settings", "make_setting": ".settings",
    "compress": ".compression.pipeline", "compress_and_evaluate": ".compression.pipeline",
    "quantize": ".compression.pipeline", "load_compressed": ".compression.pipeline",
    "compensate": ".compression.compensate", "fold_compensation": ".compression.fold",
    "DataBundle": ".data", "from_tensors": ".data", "load_data": ".data",
    "evaluate": ".evaluation",
    "build_model": ".models", "zoo_names": ".models", "configure_threads": ".threads",
    "create_model": ".train.pretrain", "pretrain": ".train.pretrain",
    "prune": ".compression.prune", "sparsity_report": ".compression.prune", "recalibrate_bn": ".compression.bn",
    "model_stats": ".compression.quant", "quantize_tensor": ".compression.quant",
    "RunSpec": ".train.runs", "get_run": ".train.runs", "list_runs": ".train.runs",
    "SAM": ".train.sam", "frozen_bn": ".train.sam",
    "settings_grid": ".distributed.sweep", "sweep": ".distributed.sweep",
    "FinetuneResult": ".train.finetune", "finetune": ".train.finetune",
    "PretrainSpec": ".train.pretrain_runs", "get_pretrain": ".train.pretrain", "get_transfer": ".train.pretrain",
    "compose": ".studies.compose", "Pipeline": ".studies.compose", "step_costs": ".studies.compose_costs",
    "adapt_model": ".adapt.recipes", "adapt_search": ".adapt.recipes", "AdaptResult": ".adapt.recipes",
}
# public module aliases kept from the flat layout: craftlab.sharpness, craftlab.landscape, ...
_MODULES: dict[str, str] = {
    "sharpness": ".probes.sharpness", "landscape": ".probes.landscape", "hessian": ".probes.hessian",
    "quant": ".compression.quant", "plots": ".viz.plots", "widgets": ".viz.widgets",
    "figures": ".viz.experiment_figures", "transforms": ".transforms",
    "experiments": ".studies.experiments", "stats": ".analysis.stats", "settings": ".settings",
}

__all__ = ["__version__", *_NAMES, *_MODULES]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _NAMES, _MODULES)
