"""Notebook controls that re-render a plotly figure in place, and degrade to a static figure.

``interactive_figure(make_figure, sparsity=[0.3, 0.5, 0.7], method=["magnitude", "wanda"])`` as the last
line of a cell shows one control per keyword (a slider for numbers, toggle buttons for a few strings, a
dropdown otherwise) above an output area holding ``make_figure(sparsity=0.3, method="magnitude")``; moving
a control re-renders the figure in that same area. What ``make_figure`` prints goes into that area too, and
is replaced with the figure, so the text on screen is always about the setting shown. While it recomputes,
"computing…" shows beside the controls, and changes that come quickly (arrow keys held down) are
*debounced*: one recompute, for the last value.

The output also carries a **static copy** of the figure (plotly JSON and HTML), which JupyterLab ignores in
favour of the live widget but which an executed-and-exported notebook (nbconvert, a viewer without the
widget state) shows instead of an empty ``VBox(...)``. Without ipywidgets, or with ``CRAFTLAB_STATIC=1``, the
default figure itself is returned, so a notebook runs top to bottom headless and shows every figure.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Control", "have_widgets", "interactive_figure"]

STATIC_ENV = "CRAFTLAB_STATIC"
DEBOUNCE_S = 0.35
"""Changes within this many seconds of each other make one recompute (in a kernel)."""


def have_widgets() -> bool:
    """True when ipywidgets can be imported and ``CRAFTLAB_STATIC`` is not set to a true value."""
    if os.environ.get(STATIC_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class Control:
    """One control: ``options`` (a sequence), the initial ``value`` (default: the first option) and an
    optional ``label`` and ``format`` (``"{:.0%}"`` style, used for the option labels)."""

    def __init__(self, options: Sequence[Any], value: Any = None, label: str | None = None,
                 format: str | None = None):
        self.options = list(options)
        if not self.options:
            raise ValueError("a control needs at least one option")
        self.value = self.options[0] if value is None else value
        if self.value not in self.options:
            raise ValueError(f"initial value {self.value!r} is not one of the options {self.options}")
        self.label = label
        self.format = format

    def names(self) -> list[tuple[str, Any]]:
        fmt = self.format or "{}"
        return [(fmt.format(o), o) for o in self.options]


def _as_control(spec: Any) -> Control:
    if isinstance(spec, Control):
        return spec
    if isinstance(spec, Mapping):
        return Control(**spec)
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise TypeError(f"a control is a list of options or a Control, got {spec!r}")
    return Control(spec)


def _widget(name: str, control: Control) -> Any:
    import ipywidgets as w

    label = control.label or name
    numeric = all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in control.options)
    style = {"description_width": "initial"}
    if numeric and len(control.options) > 1:
        return w.SelectionSlider(options=control.names(), value=control.value, description=label,
                                 continuous_update=False, style=style, layout=w.Layout(width="420px"))
    if len(control.options) <= 5 and all(len(n) <= 14 for n, _ in control.names()):
        return w.ToggleButtons(options=control.names(), value=control.value, description=label, style=style)
    return w.Dropdown(options=control.names(), value=control.value, description=label, style=style)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _static_bundle(obj: Any) -> dict[str, Any]:
    """`obj`'s rich representations for a reader without the widget: plotly JSON and self-contained HTML for a
    plotly figure (plotly.js from its CDN), IPython's formatters otherwise."""
    if hasattr(obj, "to_plotly_json") and hasattr(obj, "to_html"):
        return {"application/vnd.plotly.v1+json": obj.to_plotly_json(),
                "text/html": obj.to_html(include_plotlyjs="cdn", full_html=False)}
    try:
        from IPython.core.formatters import format_display_data

        data, _ = format_display_data(obj)
    except Exception:
        return {}
    return {k: v for k, v in data.items() if k != "text/plain"}


def interactive_figure(make_figure: Callable[..., Any], static: bool | None = None,
                       debounce: float | None = None, **controls: Any) -> Any:
    """Controls and ``make_figure(**values)`` below them, re-rendered in place on every change.

    Like a plotly figure or an ipywidget, the returned object shows itself when it is the last
    expression of a cell (wrap it in ``IPython.display.display`` otherwise).

    Args:
        make_figure: called with one keyword per control; returns a plotly figure (or anything
            ``IPython.display.display`` can show, e.g. a DataFrame). It is called once here, with the
            default values, and an error in that call propagates (so a headless run fails loudly); errors
            in later, interactive calls are printed in the output area instead. What it prints goes to the
            output area, above the figure, and is replaced on the next change.
        static: force the static fallback (``True``) or the widgets (``False``); default: widgets when
            :func:`have_widgets`.
        debounce: seconds to wait for more changes before recomputing (default :data:`DEBOUNCE_S` in a
            kernel, 0 elsewhere: every change renders at once).
        **controls: name -> options list, :class:`Control`, or a dict of Control arguments.

    Returns:
        An ipywidgets ``VBox`` (controls, then a box with the busy sign and the output area; ``.controls``
        maps names to widgets; its display also carries the static figure), or in static mode the default
        figure itself.
    """
    ctrls = {name: _as_control(spec) for name, spec in controls.items()}
    defaults = {name: c.value for name, c in ctrls.items()}
    if static is None:
        static = not have_widgets()
    if static:
        return make_figure(**defaults)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # into the widget's output area, not above the controls
        first = make_figure(**defaults)

    import ipywidgets as w

    widgets = {name: _widget(name, c) for name, c in ctrls.items()}
    out = w.Output()
    busy = w.HTML("", layout=w.Layout(height="1.6em"))
    delay = (DEBOUNCE_S if _in_kernel() else 0.0) if debounce is None else float(debounce)
    state: dict[str, Any] = {"timer": None, "figure": first}
    lock = threading.Lock()

    def show(fig: Any, text: str) -> None:
        out.outputs = ()  # replace, never append: one setting on screen
        if text:
            out.append_stdout(text)
        if fig is not None:
            out.append_display_data(fig)

    def render() -> None:
        with lock:  # one recompute at a time; a change during it renders again after
            values = {name: wd.value for name, wd in widgets.items()}
            busy.value = "<i>computing…</i>"
            buf, fig = io.StringIO(), None
            try:
                with contextlib.redirect_stdout(buf):
                    fig = make_figure(**values)
                state["figure"] = fig
            except Exception as err:  # show the problem where the figure would be, keep the controls alive
                buf.write(f"could not draw the figure for {values}: {type(err).__name__}: {err}\n")
            show(fig, buf.getvalue())
            busy.value = ""

    def changed(*_: Any) -> None:
        if delay <= 0:
            render()
            return
        busy.value = "<i>computing…</i>"
        if state["timer"] is not None:
            state["timer"].cancel()
        state["timer"] = threading.Timer(delay, render)
        state["timer"].daemon = True
        state["timer"].start()

    show(first, printed.getvalue())
    for wd in widgets.values():
        wd.observe(changed, names="value")

    class _FigureBox(w.VBox):
        def _repr_mimebundle_(self, **kwargs: Any) -> Any:
            bundle = super()._repr_mimebundle_(**kwargs)
            data = bundle[0] if isinstance(bundle, tuple) else bundle
            if isinstance(data, dict):
                for k, v in _static_bundle(state["figure"]).items():
                    data.setdefault(k, v)
            return bundle

    box = _FigureBox([*widgets.values(), w.VBox([busy, out])])
    box.controls = widgets
    return box
