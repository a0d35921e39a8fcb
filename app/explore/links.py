"""Shared links: the URL query of a view (``?model=resnet-tiny&method=wanda&sparsity=0.3&...``) and its
validation when a page opens one.

A link is opened by one page-load event that sets the controls *and* computes the view from the same
values (:meth:`craftlab_app.explore.handlers.Callbacks.open_link`), so no other view is computed or shown first,
and no later load answer can put the default model back. A link whose values the controls cannot show
(``?sparsity=2``, ``?w=99``, ``?model=foo``, ``?method=N:M&nm=3:4``, an N:M sparsity that is not 1 − N/M) is
refused as a whole, by name: the page says so and shows the default view, so the controls and the panels
always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from craftlab.registry import COMPENSATION_METHODS, PRUNE_SCORERS, QUANT_RECIPES
from craftlab.settings import make_setting

__all__ = ["BITS_CHOICES", "COMPENSATION_CHOICES", "CONTROL_KEYS", "INITIAL", "LINK_KEYS", "PATTERN_CHOICES",
           "RECIPE_CHOICES", "SPARSITY_MAX", "parse_link"]

BITS_CHOICES = [("float", "None"), ("16", "16"), ("8", "8"), ("7", "7"), ("6", "6"), ("5", "5"), ("4", "4"),
                ("3", "3"), ("2", "2")]
"""Bit-widths offered; a typed value that is not one of these labels is sent as typed (and refused by name)."""
INITIAL = {"method": "magnitude", "sparsity": 0.5, "w_bits": "None", "a_bits": "None", "granularity": "channel",
           "pattern": "2:4", "kind": "contour", "scale": "log10", "recipe": "uniform", "compensation": "none"}
RECIPE_CHOICES = QUANT_RECIPES.choices()
"""Quantization recipes offered: every registered one (craftlab.registry.QUANT_RECIPES), the default first."""
COMPENSATION_CHOICES = [("none", "none"), *((f"{c.label} ({c.blurb})", name)
                                            for name, c in COMPENSATION_METHODS.all().items())]
"""Compensations offered: the value sent is what make_setting parses ("none" = no compensation)."""
NM_PATTERNS = ("2:4", "1:4", "4:8", "1:2")
"""N:M patterns offered (N kept of every M); also the extra points of the accuracy-vs-sparsity plot."""
PATTERN_CHOICES = [(f"{p} (keep {p.split(':')[0]} of {p.split(':')[1]})", p) for p in NM_PATTERNS]
"""N:M patterns offered: N weights kept of every M; the value sent is the bare pattern make_setting parses."""
METHODS = (*PRUNE_SCORERS.names(), "N:M")
"""Pruning methods offered: every registered score (craftlab.registry.PRUNE_SCORERS) and N:M."""
SPARSITY_MAX = 0.95
"""The sparsity slider's maximum (a link or a typed value above it is refused, never clamped)."""

CONTROL_KEYS = ("model", "method", "sparsity", "w_bits", "a_bits", "granularity", "pattern", "bn", "recipe",
                "compensation", "kind", "scale")
"""The controls a link sets, in the order of the page-load event's outputs."""
LINK_KEYS = ("model", "method", "sparsity", "w", "a", "g", "nm", "bn", "recipe", "comp", "kind", "scale")
"""The query keys, one per :data:`CONTROL_KEYS` entry (``panels.query_of`` writes them)."""

_OFFERED: dict[str, Sequence[str]] = {
    "method": METHODS, "w_bits": [v for _, v in BITS_CHOICES], "a_bits": [v for _, v in BITS_CHOICES],
    "granularity": ("channel", "tensor"), "pattern": [v for _, v in PATTERN_CHOICES],
    "recipe": [v for _, v in RECIPE_CHOICES], "compensation": [v for _, v in COMPENSATION_CHOICES],
    "kind": ("contour", "surface"), "scale": ("log10", "linear")}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _canonical_bits(v: str) -> str:
    return "None" if v.strip().lower() in ("none", "float", "fp", "fp32", "") else v.strip()


def parse_link(query: Mapping[str, str], defaults: Mapping[str, Any],
               models: Sequence[str] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The control values a URL query asks for, over `defaults` (a dict keyed by :data:`CONTROL_KEYS`), and
    the reason it is refused (then the values are None).

    ``(None, None)``: the query names no control. `models`: the model values the picker offers (None: any).

    Example::

        >>> d = {"model": "vit-tiny", "method": "magnitude", "sparsity": 0.5, "w_bits": "None", "a_bits": "None",
        ...      "granularity": "channel", "pattern": "2:4", "bn": False, "recipe": "uniform",
        ...      "compensation": "none", "kind": "contour", "scale": "log10"}
        >>> parse_link({"sparsity": "0.3", "w": "4"}, d)[0]["w_bits"]
        '4'
        >>> parse_link({"sparsity": "2"}, d)[1]
        'sparsity must be in [0, 0.95], got 2'
    """
    asked = {c: str(query[k]) for c, k in zip(CONTROL_KEYS, LINK_KEYS) if k in query}
    if not asked:
        return None, None
    out = dict(defaults)
    for key, raw in asked.items():
        v = raw.strip()
        if key == "model":
            if models is not None and v not in models:
                return None, f"model {v!r} is not one this server offers ({', '.join(models[:4])}, ...)"
            out[key] = v
        elif key == "sparsity":
            try:
                x = float(v)
            except ValueError:
                return None, f"sparsity must be a number, got {v!r}"
            if not 0.0 <= x <= SPARSITY_MAX:
                return None, f"sparsity must be in [0, {SPARSITY_MAX:g}], got {v}"
            out[key] = x
        elif key == "bn":
            if v.lower() not in _TRUE + _FALSE:
                return None, f"bn must be 1 or 0, got {v!r}"
            out[key] = v.lower() in _TRUE
        else:
            if key in ("w_bits", "a_bits"):
                v = _canonical_bits(v)
            if v not in _OFFERED[key]:
                name = {"w_bits": "w", "a_bits": "a", "granularity": "g", "pattern": "nm", "compensation": "comp"}
                return None, f"{name.get(key, key)} must be one of {', '.join(_OFFERED[key])}, got {raw!r}"
            out[key] = v
    if out["method"] == "N:M":
        nm = make_setting("N:M", 0, pattern=out["pattern"]).sparsity
        if "sparsity" in asked and abs(float(out["sparsity"]) - nm) > 1e-9:
            return None, (f"sparsity {out['sparsity']:g} does not match the N:M pattern {out['pattern']} "
                          f"(1 − N/M = {nm:g})")
        out["sparsity"] = nm
    try:
        make_setting(out["method"], out["sparsity"], out["w_bits"], out["a_bits"], out["granularity"], out["pattern"],
                     recalibrate_bn=bool(out["bn"]), recipe=out["recipe"],
                     compensation=None if out["compensation"] == "none" else out["compensation"])
    except ValueError as err:
        return None, str(err)
    return out, None
