"""CraftLab: compression-aware fine-tuning (CrAFT) of vision models, and why flat minima compress well.

Public API (everything a notebook or the app needs)::

    data = craftlab.load_data("digits")                       # offline bundle: .train .val .test .calib
    model = craftlab.create_model("vit-tiny", num_classes=10)  # mnist5k-pretrained zoo model, new head
    res = craftlab.finetune(model, data, sam_rho=0.05)         # CrAFT: same schedule + SAM
    pruned = craftlab.prune(res.model, 0.5, method="wanda", calib=data.calib)
    q = craftlab.quantize(res.model, w_bits=4, a_bits=8, calib=data.calib)
    craftlab.evaluate(q, data.test)                            # {"accuracy", "loss", "n"}
"""

__version__ = "0.1.0"

from . import experiments, explore, landscape, plots, quant, sharpness, widgets
from .checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from .compress import compress, compress_and_evaluate
from .data import DataBundle, from_tensors, load_data
from .evaluate import evaluate
from .models import create_model, zoo_names
from .prune import prune, sparsity_report
from .quant import model_stats, quantize, quantize_tensor
from .runs import RunSpec, get_run, list_runs
from .sam import SAM, frozen_bn
from .sweep import settings_grid, sweep
from .train import FinetuneResult, finetune, pretrain

__all__ = [
    "__version__",
    "CheckpointError", "load_checkpoint", "read_meta", "save_checkpoint",
    "compress", "compress_and_evaluate",
    "DataBundle", "from_tensors", "load_data",
    "evaluate",
    "create_model", "zoo_names",
    "prune", "sparsity_report",
    "landscape", "plots", "sharpness",
    "experiments", "explore", "widgets",
    "quant", "quantize", "quantize_tensor", "model_stats",
    "RunSpec", "get_run", "list_runs",
    "SAM", "frozen_bn",
    "settings_grid", "sweep",
    "FinetuneResult", "finetune", "pretrain",
]
