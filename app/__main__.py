"""``python -m craftlab_app [--host 127.0.0.1] [--port 7860]``: serve the CraftLab app (= ``craftlab app``)."""

from __future__ import annotations

import argparse

from .ui import launch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app", description="Serve the CraftLab Gradio app.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    a = p.parse_args(argv)
    launch(host=a.host, port=a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
