"""What a training step holds: moved to :mod:`craftlab.measure.memory` (one measure for every paper); the names
stay importable from here for ``adapt.compare``.

Example::

    >>> from craftlab.adapt.memory import measure_step
    >>> measure_step.__module__
    'craftlab.measure.memory'
"""

from __future__ import annotations

from ..measure.memory import SavedTensorMeter, TrainingMemory, measure_step, optimizer_state_bytes

__all__ = ["SavedTensorMeter", "TrainingMemory", "measure_step", "optimizer_state_bytes"]
