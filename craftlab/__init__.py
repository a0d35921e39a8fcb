"""CraftLab: compression-aware fine-tuning (CrAFT) of vision models, and why flat minima compress well."""

__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from .data import DataBundle, from_tensors, load_data
from .models import create_model, zoo_names

__all__ = [
    "__version__",
    "CheckpointError", "load_checkpoint", "read_meta", "save_checkpoint",
    "DataBundle", "from_tensors", "load_data",
    "create_model", "zoo_names",
]
