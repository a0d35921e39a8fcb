"""Old path of the adaptation study, kept for importers that have not moved yet (the app): the arms table is
:mod:`craftlab.adapt.methods` (derived from the method registry), one training step :mod:`craftlab.adapt.steps`,
and :func:`compare_methods` / :func:`kway_speedup` :mod:`craftlab.studies.adapt` (loaded on first use: the study
sits a layer above this package).

Example::

    from craftlab.adapt.methods import ARMS             # new code imports the new paths
    from craftlab.studies.adapt import compare_methods
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .methods import ARMS, LAST, LORA, MAIN_ARMS, MIET
from .steps import Step, method_memory, training_step

_STUDY = "craftlab.studies.adapt"
_LAZY = {"compare_methods": _STUDY, "kway_speedup": _STUDY}
__all__ = ["ARMS", "LAST", "LORA", "MAIN_ARMS", "MIET", "Step", "method_memory", "training_step", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
