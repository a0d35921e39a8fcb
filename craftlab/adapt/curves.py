"""Old path of the adaptation curves, kept for importers that have not moved yet: everything here is
:mod:`craftlab.studies.adapt` (loaded on first use: the study sits a layer above this package).

Example::

    from craftlab.studies.adapt import adapt_curves    # new code imports the new path
"""

from __future__ import annotations

from .._lazy import lazy_exports

_STUDY = "craftlab.studies.adapt"
_NAMES = ("CURVE_ARMS", "LR_FACTORS", "Curves", "adapt_curves", "choose", "lr_grid", "reading", "summarize")
__all__ = list(_NAMES)

__getattr__, __dir__ = lazy_exports(__name__, globals(), dict.fromkeys(_NAMES, _STUDY))
