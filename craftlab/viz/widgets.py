"""Notebook controls that re-render a plotly figure in place, and static figures that survive without a kernel.

``interactive_figure(make_figure, sparsity=[0.3, 0.5, 0.7], method=["magnitude", "wanda"])`` as the last
line of a cell shows one control per keyword (a slider for numbers, toggle buttons for a few strings, a
dropdown otherwise) above an output area holding ``make_figure(sparsity=0.3, method="magnitude")``; moving
a control re-renders the figure in that same area. What ``make_figure`` prints goes into that area too, and
is replaced with the figure, so the text on screen is always about the setting shown. While it recomputes,
"computing…" shows beside the controls, and changes that come quickly (arrow keys held down) are
*debounced*: one recompute, for the last value.

The figure goes into the output area as its plotly mime bundle (``application/vnd.plotly.v1+json``, what
JupyterLab's plotly renderer draws), never through ``display(fig)``: plotly's own ``_ipython_display_``
publishes to the *executing cell*, so a figure appended that way lands outside the widget and later
changes are drawn nowhere.

The widget's own output also carries a **static copy** of the figure (plotly JSON and, when
:func:`static_figures` is on, a PNG), which JupyterLab ignores in favour of the live widget but which an
exported notebook (nbconvert, nbviewer, GitHub) shows instead of an empty ``VBox(...)``. Without
ipywidgets, or with ``CRAFTLAB_STATIC=1``, the default figure itself is returned, so a notebook runs top
to bottom headless and shows every figure.

:func:`static_figures` makes every plotly figure shown in the notebook carry a PNG beside its plotly JSON
(rendered by kaleido with the system's chromium, one browser kept running): the executed notebook then
shows every figure where no JavaScript runs. Without kaleido or a chromium it does nothing and says so.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import io
import json
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Control", "figure_bundle", "have_widgets", "interactive_figure", "static_figures", "static_image",
           "PLOTLY_MIME"]

STATIC_ENV = "CRAFTLAB_STATIC"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
IMAGE_ENV = "CRAFTLAB_STATIC_IMAGES"
"""Set to 0 to keep :func:`static_figures` from rendering PNGs (e.g. on a machine without chromium)."""
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


def _is_plotly(obj: Any) -> bool:
    return hasattr(obj, "to_plotly_json") and hasattr(obj, "to_json")


_KALEIDO: dict[str, Any] = {"state": None}  # None: not tried; True: server running; False: unavailable
_KALEIDO_LOCK = threading.Lock()


def _stop_kaleido() -> None:
    if _KALEIDO["state"] is True:
        import kaleido

        with contextlib.suppress(Exception):
            kaleido.stop_sync_server(silence_warnings=True)
        _KALEIDO["state"] = None


def static_image(fig: Any, format: str = "png", width: int = 760, height: int | None = None) -> bytes | None:
    """``fig`` (a plotly figure) rendered as PNG or SVG bytes by kaleido, or None where kaleido or a chromium
    is missing (or ``CRAFTLAB_STATIC_IMAGES=0``). The first call starts one headless chromium (about 2 s),
    kept for the following calls (about 0.3 s each) and stopped at exit.

    >>> import plotly.graph_objects as go
    >>> png = static_image(go.Figure(go.Bar(y=[1, 2])))
    >>> png is None or png[:4] == b"\\x89PNG"
    True
    """
    if not _is_plotly(fig) or os.environ.get(IMAGE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if format not in ("png", "svg"):
        raise ValueError(f"format must be 'png' or 'svg', got {format!r}")
    with _KALEIDO_LOCK:
        if _KALEIDO["state"] is False:
            return None
        try:
            import kaleido

            if _KALEIDO["state"] is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    kaleido.start_sync_server(silence_warnings=True)
                _KALEIDO["state"] = True
                atexit.register(_stop_kaleido)
            layout = fig.layout
            opts = {"format": format, "width": int(layout.width or width),
                    "height": int(layout.height or height or 450)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return kaleido.calc_fig_sync(fig, opts=opts)
        except Exception as err:  # no kaleido, no chromium, a browser that would not start: no static copies
            _KALEIDO["state"] = False
            warnings.warn(f"static figures are off: kaleido could not render ({type(err).__name__}: {err})",
                          stacklevel=2)
            return None


def figure_bundle(obj: Any, image: bool = False) -> dict[str, Any]:
    """The mime bundle that shows ``obj``: for a plotly figure its plotly JSON (what JupyterLab draws), a
    ``text/plain`` line and, with ``image=True``, a PNG (:func:`static_image`, when it can render);
    IPython's formatters for anything else (a DataFrame: HTML and text).

    >>> import plotly.graph_objects as go
    >>> sorted(figure_bundle(go.Figure(layout_title_text="t")))
    ['application/vnd.plotly.v1+json', 'text/plain']
    """
    if _is_plotly(obj):
        spec = json.loads(obj.to_json())
        title = (obj.layout.title.text or "") if obj.layout.title else ""
        data: dict[str, Any] = {PLOTLY_MIME: spec, "text/plain": f"<plotly figure: {title}>"}
        png = static_image(obj) if image else None
        if png is not None:
            data["image/png"] = base64.b64encode(png).decode("ascii")
        return data
    try:
        from IPython.core.formatters import format_display_data

        data, _ = format_display_data(obj)
    except Exception:
        return {"text/plain": repr(obj)}
    return dict(data)


def static_figures(enable: bool = True) -> bool:
    """Make every plotly figure displayed from now on carry a PNG beside its plotly JSON (a plotly renderer
    named ``"craftlab"`` becomes the default), so that an executed notebook exported to HTML, nbviewer or
    GitHub shows the figure without JavaScript. Returns whether PNGs can be rendered here (kaleido and a
    chromium); without them figures show as before. ``enable=False`` restores plotly's default renderer.
    """
    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer

    class _PlotlyWithImage(MimetypeRenderer):
        def to_mimebundle(self, fig_dict: dict) -> dict:
            import plotly.graph_objects as go

            return figure_bundle(go.Figure(fig_dict, skip_invalid=True), image=True)

    if not enable:
        pio.renderers.default = _KALEIDO.get("previous_renderer") or pio.renderers.default
        _KALEIDO["enabled"] = False
        return False
    _KALEIDO["enabled"] = True
    pio.renderers["craftlab"] = _PlotlyWithImage()
    if pio.renderers.default != "craftlab":
        _KALEIDO["previous_renderer"] = pio.renderers.default
    pio.renderers.default = "craftlab"
    import plotly.graph_objects as go

    return static_image(go.Figure()) is not None


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
        # Replace, never append: one setting on screen. The figure goes in as its mime bundle: appending the
        # figure object would let plotly publish it to the executing cell and leave this area empty.
        outputs: list[dict[str, Any]] = []
        if text:
            outputs.append({"output_type": "stream", "name": "stdout", "text": text})
        if fig is not None:
            outputs.append({"output_type": "display_data", "data": figure_bundle(fig), "metadata": {}})
        out.outputs = tuple(outputs)

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
                for k, v in figure_bundle(state["figure"], image=bool(_KALEIDO.get("enabled"))).items():
                    data.setdefault(k, v)
            return bundle

    box = _FigureBox([*widgets.values(), w.VBox([busy, out])])
    box.controls = widgets
    return box
