"""Input validation shared by the core: clear errors that name the problem."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "",
                 suggestions: list[str] | None = None) -> ValueError:
    """A ValueError for an unknown `name`, suggesting the closest of `choices` (or the given `suggestions`)."""
    choices = list(choices)
    close = suggestions if suggestions is not None else difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    msg = f"unknown {kind} {name!r}"
    if close:
        msg += f" (did you mean {', '.join(repr(c) for c in close)}?)"
    elif choices and len(choices) <= 12:
        msg += f" (choose from {', '.join(repr(c) for c in choices)})"
    if hint:
        msg += f"; {hint}"
    return ValueError(msg)


def check_sparsity(sparsity: float) -> float:
    """Sparsity must be a fraction in [0, 1)."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s
