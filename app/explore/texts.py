"""The Explore tab's static words (the panels' words that depend on a view are in :mod:`.panels`)."""

from __future__ import annotations

__all__ = ["PLANE_NOTE"]

PLANE_NOTE = (
    "_Both planes share one colour scale. If the CrAFT arm's minimum (✕) sits higher than AdamW's, it is a "
    "different point, not a worse one: SAM minimizes the worst loss around the weights, not the loss at them, "
    "and settles where the loss rises slowly. What decides the compressed accuracy is how far up the walls the "
    "compressed point (★) lands._")

