"""The Learn tab: what the page shows, and what the claims ledger found for each paper (:mod:`.texts`)."""

from __future__ import annotations

import gradio as gr

from .texts import learn_text

__all__ = ["build_tab"]


def build_tab() -> None:
    """The Learn tab, in the current ``gr.Tabs`` context (static: no events)."""
    with gr.Tab("Learn", id="learn"):
        gr.Markdown(learn_text())
