"""Issue 26: a shared link round-trips (query_of -> parse_link gives back every control, kind and scale
included), and a link the controls cannot show is refused as a whole, by name (never clamped)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

pytest.importorskip("gradio")

from craftlab_app.explore import links, panels  # noqa: E402

from craftlab.settings import make_setting  # noqa: E402

DEFAULTS = {"model": "vit-tiny", "method": "magnitude", "sparsity": 0.5, "w_bits": "None", "a_bits": "None",
            "granularity": "channel", "pattern": "2:4", "bn": False, "recipe": "uniform", "compensation": "none",
            "kind": "contour", "scale": "log10"}
MODELS = ["vit-tiny", "resnet-tiny"]


def parse(query: str):
    return links.parse_link(dict(parse_qsl(query.lstrip("?"))), DEFAULTS, MODELS)


def test_a_link_round_trips_every_control():
    s = make_setting("wanda", 0.3, 4, 8, "tensor", recalibrate_bn=True, compensation="qwt-v2")
    got, problem = parse(panels.query_of("resnet-tiny", s, kind="surface", scale="linear"))
    assert problem is None
    assert got == {**DEFAULTS, "model": "resnet-tiny", "method": "wanda", "sparsity": 0.3, "w_bits": "4",
                   "a_bits": "8", "granularity": "tensor", "bn": True, "compensation": "qwt-v2", "kind": "surface",
                   "scale": "linear"}
    nm, problem = parse(panels.query_of("vit-tiny", make_setting("N:M", 0, pattern="1:4")))
    assert problem is None and nm["method"] == "N:M" and nm["pattern"] == "1:4" and nm["sparsity"] == 0.75
    assert parse("") == (None, None) and parse("?foo=1") == (None, None)


@pytest.mark.parametrize("query, why", [
    ("?sparsity=2", "sparsity must be in [0, 0.95], got 2"),
    ("?sparsity=-0.1", "sparsity must be in [0, 0.95], got -0.1"),
    ("?sparsity=abc", "sparsity must be a number"),
    ("?w=99", "w must be one of None, 16, 8, 7, 6, 5, 4, 3, 2, got '99'"),
    ("?a=1", "a must be one of"),
    ("?model=foo", "model 'foo' is not one this server offers"),
    ("?method=N:M&nm=3:4", "nm must be one of 2:4, 1:4, 4:8, 1:2, got '3:4'"),
    ("?method=N:M&nm=2:4&sparsity=0.3", "sparsity 0.3 does not match the N:M pattern 2:4 (1 − N/M = 0.5)"),
    ("?kind=wireframe", "kind must be one of contour, surface"),
    ("?bn=maybe", "bn must be 1 or 0"),
])
def test_a_link_the_controls_cannot_show_is_refused_by_name(query, why):
    got, problem = parse(query)
    assert got is None and problem is not None and why in problem, problem
