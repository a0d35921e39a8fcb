"""``craftlab app``: serve the Gradio app (the ``app`` extra), looked up at run time: the core never imports it."""

from __future__ import annotations

import argparse
import importlib
from typing import Any


def add_parser(sub: Any) -> None:
    """Add app."""
    s = sub.add_parser("app", help="serve the CraftLab Gradio app (needs the 'app' extra)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)



def run(a: argparse.Namespace) -> int:
    try:
        launch = importlib.import_module("craftlab_app.ui").launch
    except ImportError as err:
        raise RuntimeError(f"the app needs the 'app' extra (pip install 'craftlab[app]'): {err}") from err
    launch(host=a.host, port=a.port)
    return 0

