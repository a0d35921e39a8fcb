"""The app's frame of a plotly figure, shared by the tabs: the arms' colours (plain blue, CrAFT red), titles
wrapped to the figure, a blank figure that carries a message. Every figure has an explicit height (Gradio renders
autosized plotly figures at zero height)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from craftlab.viz.plots import PALETTE, TEMPLATE

__all__ = ["CURVE_HEIGHT", "ROLE_COLORS", "empty_figure", "layout", "title_lines", "wrap_title"]

ROLE_COLORS = {"plain": PALETTE[0], "craft": PALETTE[1]}
CURVE_HEIGHT = 360


def wrap_title(title: str, width: int = 72) -> str:
    """`title` with its lines (``<br>``-separated; ``<sup>`` lines kept as such) wrapped at `width` characters,
    so that plotly, which never wraps, does not cut a long title at the figure's edges. A view tag
    (``[model · setting]``) is never split.

    Example::

        >>> wrap_title("a " * 40 + "[vit-tiny · wanda 70%]").split("<br>")[-1]
        'a a a a [vit-tiny · wanda 70%]'
    """
    import re
    import textwrap

    lines: list[str] = []
    for part in title.split("<br>"):
        sup = part.startswith("<sup>") and part.endswith("</sup>")
        text = part[5:-6] if sup else part
        tags = re.findall(r"\[[^\]]*\]", text)
        protected = text
        for i, t in enumerate(tags):  # a placeholder as long as the tag, without spaces: wrapped as one word
            protected = protected.replace(t, chr(0xE000 + i) * len(t), 1)
        for ln in textwrap.wrap(protected, width, break_on_hyphens=False, break_long_words=False) or [""]:
            for i, t in enumerate(tags):
                ln = ln.replace(chr(0xE000 + i) * len(t), t)
            lines.append(f"<sup>{ln}</sup>" if sup else ln)
    return "<br>".join(lines)


def title_lines(title: str | None) -> int:
    return 0 if not title else title.count("<br>") + 1


def layout(fig: go.Figure, title: str | None, height: int, **kw: Any) -> go.Figure:
    """The app's frame of a figure. Differs from ``craftlab.viz.plots``' own frame in the legend (left, just
    above the plot, where the app's long arm labels fit), titles wrapped to the figure (:func:`wrap_title`) with
    a top margin that fits them, and axis margins that grow to fit their labels."""
    title = wrap_title(title) if title else title
    top = 30 + 20 * title_lines(title)
    fig.update_layout(title=title, height=int(height) + max(0, top - 70), template=TEMPLATE, autosize=True,
                      margin={"l": 60, "r": 20, "t": top, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0.0},
                      **kw)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def empty_figure(message: str, height: int = CURVE_HEIGHT) -> go.Figure:
    """A blank figure carrying `message` (while something is being computed, or on no data), wrapped into
    lines of at most 80 characters so that a long explanation is never cut at the figure's edges."""
    import textwrap

    lines = [w for part in message.split("<br>") for w in (textwrap.wrap(part, 80, break_on_hyphens=False) or [""])]
    fig = go.Figure()
    fig.add_annotation(text="<br>".join(lines), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 14, "color": "grey"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return layout(fig, None, height)
