"""Notebook controls that re-render a plotly figure in place, and degrade to a static figure.

``interactive_figure(make_figure, sparsity=[0.3, 0.5, 0.7], method=["magnitude", "wanda"])`` as the last
line of a cell shows one control per keyword (a slider for numbers, toggle buttons for a few strings, a
dropdown otherwise) above an output area holding ``make_figure(sparsity=0.3, method="magnitude")``; moving
a control re-renders the figure in that same area. Without ipywidgets, or with ``CRAFTLAB_STATIC=1`` in the
environment, the default figure is returned instead and shows as an ordinary output, so a notebook runs top
to bottom headless (CI, nbconvert) and still shows every figure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Control", "have_widgets", "interactive_figure"]

STATIC_ENV = "CRAFTLAB_STATIC"


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


def interactive_figure(make_figure: Callable[..., Any], static: bool | None = None, **controls: Any) -> Any:
    """Controls and ``make_figure(**values)`` below them, re-rendered in place on every change.

    Like a plotly figure or an ipywidget, the returned object shows itself when it is the last
    expression of a cell (wrap it in ``IPython.display.display`` otherwise).

    Args:
        make_figure: called with one keyword per control; returns a plotly figure (or anything
            ``IPython.display.display`` can show, e.g. a DataFrame). It is called once here, with the
            default values, and an error in that call propagates (so a headless run fails loudly); errors
            in later, interactive calls are printed in the output area instead.
        static: force the static fallback (``True``) or the widgets (``False``); default: widgets when
            :func:`have_widgets`.
        **controls: name -> options list, :class:`Control`, or a dict of Control arguments.

    Returns:
        An ipywidgets ``VBox`` (controls, then the output area; ``.controls`` maps names to widgets), or in
        static mode the default figure itself.
    """
    ctrls = {name: _as_control(spec) for name, spec in controls.items()}
    defaults = {name: c.value for name, c in ctrls.items()}
    if static is None:
        static = not have_widgets()
    first = make_figure(**defaults)
    if static:
        return first

    import ipywidgets as w
    from IPython.display import display

    widgets = {name: _widget(name, c) for name, c in ctrls.items()}
    out = w.Output()

    def render(*_: Any) -> None:
        values = {name: wd.value for name, wd in widgets.items()}
        with out:
            out.clear_output(wait=True)
            try:
                display(make_figure(**values))
            except Exception as err:  # show the problem where the figure would be, keep the controls alive
                print(f"could not draw the figure for {values}: {type(err).__name__}: {err}")

    with out:
        display(first)
    for wd in widgets.values():
        wd.observe(render, names="value")
    box = w.VBox([*widgets.values(), out])
    box.controls = widgets
    return box
