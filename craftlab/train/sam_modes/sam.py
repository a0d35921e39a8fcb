"""Plain SAM (Foret et al., 2021): the two-pass step on every step."""

from __future__ import annotations

from dataclasses import dataclass

from . import SAM_MODES_REGISTRY, Mode


@SAM_MODES_REGISTRY.register("sam")
@dataclass
class Sam(Mode):
    """Gradient at w, ascent to w + ε, gradient there, base step: every step (two passes)."""
