"""The Explore tab's event handlers: thin wrappers around a :class:`~craftlab_app.explore.service.Explorer`.

The one rule: a control change opens a new **view** (:mod:`craftlab_app.explore.session`) in ``/compress`` — the one
validation of the raw input (``make_setting``) — and every panel is then drawn from that view, titled with
its tag, by follow-ups that drop their answer (``gr.skip()``) when the session has opened a newer view in the
meantime; a landscape computation for a replaced view gives up within one forward pass. So the cards, the
curves (with their stars), the sharpness and the landscapes always show the same (model, setting).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from craftlab.settings import make_setting

from ..common.concurrency import Cancelled
from ..common.errors import LazyModule, one_line, user_errors
from . import links, panels
from .session import View, Views

if TYPE_CHECKING:  # torch, timm and plotly load in the background, after the page is served
    from .service import Explorer


figs = LazyModule(".figures", __package__)

__all__ = ["Callbacks", "user_errors"]

PANEL_OUTPUTS = 8
"""summary, plain card, craft card, interpretation, guide, sparsity curve, bits curve, BN checkbox (the link
is drawn by :meth:`Callbacks.link`, which knows the landscape's kind and scale)."""


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def _gr_progress(progress: Any):
    if progress is None:
        return None
    return lambda frac, desc: progress(frac, desc=desc)


def _skip(n: int) -> tuple[Any, ...]:
    return tuple(gr.skip() for _ in range(n))


def _compensation(value: Any) -> str | None:
    """The compensation control's value for make_setting ("none" / empty = no compensation)."""
    text = "" if value is None else str(value).strip()
    return None if text.lower() in ("", "none") else text


class Callbacks:
    """Every event handler of the Explore tab (plain methods, testable without a server)."""

    def __init__(self, explorer: Explorer) -> None:
        self.ex = explorer
        self.views = Views()

    # --- the view ------------------------------------------------------------------------------

    def compress(self, model: str, method: str, sparsity: float, w_bits: Any, a_bits: Any,
                 granularity: str = "channel", pattern: str = "2:4", recalibrate_bn: bool = False,
                 recipe: str = "uniform", compensation: str | None = "none",
                 request: gr.Request = None, progress: gr.Progress = gr.Progress()) -> tuple[dict[str, Any], View]:  # noqa: B008
        """Full-precision and compressed test accuracy of both fine-tuning arms of `model` (seed 0), and the new
        view of the session. The one validation of a control change. `recipe` (``uniform`` / ``repq``) and
        `compensation` (``none`` / ``qwt`` / ``qwt-v2``) are optional: calls without them mean no change."""
        with user_errors():
            name = str(model).strip()
            extra = {"recipe": recipe or "uniform", "compensation": _compensation(compensation)}
            setting = make_setting(method, sparsity, w_bits, a_bits, granularity, pattern,
                                   recalibrate_bn=bool(recalibrate_bn), **extra)
            view = self.views.open(_session(request), name, setting)  # replaces (cancels) the previous view
            if setting.recalibrate_bn:
                self.ex.arms(name, progress=_gr_progress(progress))
                if not self.ex.has_batchnorm(name):  # nothing to re-estimate: the view says "no BN"
                    setting = make_setting(method, sparsity, w_bits, a_bits, granularity, pattern, **extra)
                    view = self.views.open(view.session, name, setting)
            answer = self.ex.compress(name, setting, progress=_gr_progress(progress))
        return answer, View(view.session, view.seq, view.model, view.setting, answer)

    def open_link(self, model: str, method: str, sparsity: float, w_bits: Any, a_bits: Any, granularity: str,
                  pattern: str, bn: bool, recipe: str, compensation: str, kind: str, scale: str,
                  request: gr.Request = None, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        """Page load: the controls and the view of the URL's query (:func:`craftlab_app.explore.links.parse_link`), or
        of the controls as they are (in :data:`~craftlab_app.explore.links.CONTROL_KEYS` order) when the page
        has no link. One event sets the controls and computes the view from the same values, so no other view
        is shown first and no late answer puts the default model back; a refused link is named in a warning
        and the default view is shown. Returns the 12 controls, the answer and the view (all skipped when the
        user changed a control meanwhile)."""
        values = (model, method, sparsity, w_bits, a_bits, granularity, pattern, bn, recipe, compensation, kind, scale)
        defaults = dict(zip(links.CONTROL_KEYS, values))
        query = dict(getattr(request, "query_params", None) or {})
        with user_errors():
            models = [v for _, v in self.ex.model_choices()]
        asked, problem = links.parse_link(query, defaults, models)
        if problem is not None:
            gr.Warning(f"This link was not opened: {one_line(problem)}. Showing the default view.")
        use = asked or defaults
        try:
            answer, view = self._compress_values(use, request, progress)
        except gr.Error as err:
            if asked is None:
                raise
            gr.Warning(f"This link was not opened: {err.message}. Showing the default view.")
            use = defaults
            answer, view = self._compress_values(use, request, progress)
        n = len(links.CONTROL_KEYS) + 2
        use = {**use, "bn": view.setting.recalibrate_bn}  # a model without BatchNorm: the box is not left ticked
        if not self.views.current(view):
            return _skip(n)  # the user moved a control meanwhile: theirs wins
        controls = [use[k] if asked else gr.skip() for k in links.CONTROL_KEYS]
        if asked and use["model"] not in models:  # a new cached run: its label joins the choices first
            controls[0] = gr.Dropdown(choices=self.ex.model_choices(), value=use["model"])
        # else a plain value: a choices update made the dropdown's value land after the other controls' change
        # events had read the old model (a link flashed "[vit-tiny · <the link's setting>]" in 1 of 10 loads)
        return (*controls, answer, view)

    def _compress_values(self, v: dict[str, Any], request: Any, progress: Any) -> tuple[dict[str, Any], View]:
        return self.compress(v["model"], v["method"], v["sparsity"], v["w_bits"], v["a_bits"], v["granularity"],
                             v["pattern"], bool(v["bn"]), v["recipe"], v["compensation"], request=request,
                             progress=progress)

    @staticmethod
    def link(view: View | None, kind: str = "contour", scale: str = "log10") -> Any:
        """The link under the controls: the URL query that reopens the view, with the landscape's kind and scale."""
        if view is None:
            return gr.skip()
        return f"[link to this view]({panels.query_of(view.model, view.setting, kind, scale)}) · {view.tag}"

    def _render(self, view: View, compute_seeds: bool = False) -> tuple[tuple[Any, ...], bool]:
        """The panels of `view` from what is cached (seed points of its setting measured first with
        `compute_seeds`); and whether something is still coming (curve points, seeds)."""
        ex, s, model = self.ex, view.setting, view.model
        with user_errors():
            ex.ensure_seeds(model)  # a zoo model's extra seeds: fine-tuned in the background once
            verdict = ex.verdict(model, s, compute=compute_seeds, cancelled=self.views.cancelled(view))
            curves = ex.curves(model, s, wanted=lambda: self.views.current(view))
            bn = ex.has_batchnorm(model)
            name = ex.describe(model)
        card_p, card_c = panels.cards(view.answer, verdict, model, bn_used=s.recalibrate_bn if bn else None)
        seed_runs = ex.status().get("seed_runs") or {"done": 0, "total": 0}
        training = seed_runs["done"] < seed_runs["total"]
        preset = panels.preset_of(model, s)
        out = (panels.summary(view.answer, name), card_p, card_c,
               panels.interpretation(verdict, model, s.label(), training),
               panels.guide_text(preset, verdict) if preset else "",
               figs.sparsity_curve_figure(curves, s, view.answer, view.tag),
               figs.bits_curve_figure(curves, s, view.answer, view.tag),
               gr.Checkbox(interactive=bn, info=None if bn else "this model has no BatchNorm layers"))
        pending = not curves["complete"] or len(verdict.get("seeds", [])) < verdict.get("expected_seeds", 1)
        return out, pending

    def panels(self, view: View | None) -> tuple[Any, ...]:
        """Cards, interpretation, guide, curves and link of the session's view (skipped when it was replaced)."""
        if not self.views.current(view):
            return _skip(PANEL_OUTPUTS + 1)
        try:
            out, pending = self._render(view)  # type: ignore[arg-type]
        except Cancelled:  # a newer view replaced this one while it was drawn: nothing to show, nothing to log
            return _skip(PANEL_OUTPUTS + 1)
        if not self.views.current(view):
            return _skip(PANEL_OUTPUTS + 1)
        return (*out, gr.Timer(active=True))

    def seeds(self, view: View | None) -> tuple[Any, ...]:
        """The same panels after measuring the view's setting on every seed (mean ± sd and the paired verdict)."""
        if not self.views.current(view):
            return _skip(PANEL_OUTPUTS)
        try:
            out, _ = self._render(view, compute_seeds=True)  # type: ignore[arg-type]
        except Cancelled:
            return _skip(PANEL_OUTPUTS)
        return out if self.views.current(view) else _skip(PANEL_OUTPUTS)

    def sharpness(self, view: View | None, measure: str = "lambda_max",
                  progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        """Sharpness markdown of both full-precision arms of the view's model, the gap plot (CrAFT − plain per
        measure) and the scatter of the accuracy drop at the view's setting against `measure` (one point per arm
        and seed measured; the extra seeds are measured in the background and join on a later redraw)."""
        if not self.views.current(view):
            return _skip(5)
        assert view is not None
        model = view.model
        with user_errors():
            from .sharpness import MEASURES

            if measure not in MEASURES:
                raise ValueError(f"sharpness measure must be one of {', '.join(MEASURES)}, got {measure!r}")
            res = {a["role"]: a for a in self.ex.sharpness(model, progress=_gr_progress(progress)).values()}
            self.ex.compress(model, view.setting)  # seed 0's points (cached by /compress)
            table = self.ex.sharpness_table(model, view.setting)
        if not self.views.current(view):
            return _skip(5)
        return (panels.sharpness_text(res.get("plain"), model), panels.sharpness_text(res.get("craft"), model),
                panels.SHARPNESS_NOTE, figs.sharpness_gap_figure(table, view.tag, MEASURES),
                figs.sharpness_scatter(table, measure, MEASURES[measure], view.tag))

    def _landscape_figures(self, lands: dict[str, Any], kind: str, scale: str, tag: str) -> tuple[Any, Any, Any]:
        planes = dict(zip([a["role"] for a in lands.values()],
                          figs.plane_figures(lands, kind=kind, log=scale != "linear", tag=tag)))
        blank = figs.empty_figure("no such arm for this checkpoint", figs.LANDSCAPE_HEIGHT)
        return figs.path_figure(lands, tag=tag), planes.get("plain", blank), planes.get("craft", blank)

    def landscape_of(self, view: View | None, kind: str = "contour", scale: str = "log10",
                     progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, Any]:  # noqa: B008
        """The landscapes of the session's view, drawn as `kind` on a `scale` (log10 / linear) loss axis: the
        finest cached level at once, else a quick coarse one (the fine one follows through :meth:`refresh`)."""
        if not self.views.current(view):
            return _skip(3)  # type: ignore[return-value]
        assert view is not None
        if view.setting.weight_path_problem():
            return self._no_landscape(view.setting, view.tag)
        cancelled = self.views.cancelled(view)
        try:
            with user_errors():
                if kind not in ("contour", "surface"):
                    raise ValueError(f"kind must be 'contour' or 'surface', got {kind!r}")
                prog = _gr_progress(progress)
                if prog is not None and not self.ex.has_landscape(view.model, view.setting):
                    prog(0.0, "computing the loss landscapes of both arms…")
                lands = self.ex.landscape(view.model, view.setting, quick=True, cancelled=cancelled,
                                          wanted=lambda: self.views.current(view))
        except Cancelled:
            return _skip(3)  # type: ignore[return-value]
        if cancelled():
            return _skip(3)  # type: ignore[return-value]
        return self._landscape_figures(lands, kind, scale, view.tag)

    @staticmethod
    def _no_landscape(setting: Any, tag: str) -> tuple[Any, Any, Any]:
        """Three blank landscape panels saying why this setting has no weight-space path."""
        msg = (f"{tag} no landscape: {setting.weight_path_problem()}.<br>Choose the uniform recipe, and QwT-v2 or "
               "no compensation, to see it.")
        return tuple(figs.empty_figure(msg, figs.LANDSCAPE_HEIGHT) for _ in range(3))  # type: ignore[return-value]

    def landscape(self, model: str, method: str, sparsity: float, w_bits: Any, a_bits: Any,
                  granularity: str = "channel", pattern: str = "2:4", kind: str = "contour",
                  scale: str = "log10", recipe: str = "uniform",
                  compensation: str | None = "none") -> tuple[Any, Any, Any]:
        """The 1-D compression-direction slice (both arms) and one 2-D landscape per arm (stateless API, fine)."""
        with user_errors():
            if kind not in ("contour", "surface"):
                raise ValueError(f"kind must be 'contour' or 'surface', got {kind!r}")
            setting = make_setting(method, sparsity, w_bits, a_bits, granularity, pattern, recipe=recipe or "uniform",
                                   compensation=_compensation(compensation))
            tag = f"[{str(model).strip()} · {setting.label()}]"
            if setting.weight_path_problem():
                return self._no_landscape(setting, tag)
            lands = self.ex.landscape(str(model).strip(), setting)
        return self._landscape_figures(lands, kind, scale, tag)

    def refresh(self, view: View | None, kind: str, scale: str, shown: dict | None) -> tuple[Any, ...]:
        """Timer tick while something of the view is still coming: redraw the panels when new curve points or
        seeds arrived, the landscapes when the fine level replaced the coarse one; stop when all is there."""
        n = PANEL_OUTPUTS + 3 + 2
        if not self.views.current(view):
            return _skip(n)
        assert view is not None
        shown = dict(shown or {}) if (shown or {}).get("seq") == view.seq else {"seq": view.seq}
        curves = self.ex.curves(view.model, view.setting, schedule=False)
        verdict = self.ex.verdict(view.model, view.setting, compute=False)
        sig = [curves["done"], len(verdict.get("seeds", []))]
        panel_out: tuple[Any, ...] = _skip(PANEL_OUTPUTS)
        pending = True
        if sig != shown.get("panels"):
            try:
                panel_out, pending = self._render(view)
            except Cancelled:  # replaced by a newer view meanwhile
                return _skip(n)
            shown["panels"] = sig
        else:
            pending = not curves["complete"] or len(verdict["seeds"]) < verdict.get("expected_seeds", 1)
        level = self.ex.landscape_level(view.model, view.setting)
        land_out: tuple[Any, ...] = _skip(3)
        final = level == len(self.ex.levels) - 1 or bool(view.setting.weight_path_problem())
        if level is not None and final and not shown.get("land_final") and len(self.ex.levels) > 1:
            # the fine grid replaces the coarse
            lands = self.ex.landscape(view.model, view.setting, level=level)
            land_out = self._landscape_figures(lands, kind, scale, view.tag)
            shown["land_final"] = True
        active = pending or not final or self.ex.status().get("stage") not in ("ready", "failed")
        if not self.views.current(view):
            return _skip(n)
        return (*panel_out, *land_out, gr.Timer(active=active), shown)

    def export(self, view: View | None, kind: str = "contour", scale: str = "log10") -> Any:
        """Files of the session's view: its JSON (settings, answer, seeds, verdict, curves, sharpness,
        landscape numbers) and one HTML page with all its figures (opens offline)."""
        if view is None:
            raise gr.Error("nothing to export yet: wait for the first answer", print_exception=False)
        from .export import export_view

        with user_errors():
            return gr.File(value=export_view(self.ex, view, kind, scale), visible=True)

    # --- controls ------------------------------------------------------------------------------

    @staticmethod
    def method_ui(method: str, pattern: str, sparsity: float) -> tuple[Any, Any]:
        """N:M fixes the sparsity (slider shows 1 − N/M, locked) and shows the pattern picker; other methods
        free the slider and hide the picker."""
        if method == "N:M":
            try:
                s = make_setting("N:M", 0, pattern=pattern).sparsity
            except ValueError:
                s = sparsity
            return (gr.Slider(value=s, interactive=False, info="fixed by the N:M pattern: 1 − N/M"),
                    gr.Dropdown(visible=True))
        return (gr.Slider(interactive=True, info="fraction of weights zeroed"), gr.Dropdown(visible=False))

    @staticmethod
    def preset(key: str) -> tuple[Any, ...]:
        """The control values of a preset of the guided tour."""
        p = next(p for p in panels.PRESETS if p.key == key)
        return (p.model, p.method, p.sparsity, p.w_bits, p.a_bits, "channel", "2:4", False, "uniform", "none")

    @staticmethod
    def restore(request: gr.Request = None) -> tuple[Any, ...]:
        """Control values from the page URL's query (``?model=...&method=...``, see ``panels.query_of``);
        gr.skip() for what it does not say (bad values reach /compress, which names them)."""
        q = dict(getattr(request, "query_params", None) or {})
        keys = ("model", "method", "sparsity", "w", "a", "g", "nm", "bn", "recipe", "comp", "kind", "scale")
        out = []
        for k in keys:
            v = q.get(k)
            if v is None:
                out.append(gr.skip())
            elif k == "sparsity":
                try:
                    out.append(float(v))
                except ValueError:
                    out.append(gr.skip())
            elif k == "bn":
                out.append(str(v).lower() in ("1", "true", "yes", "on"))
            else:
                out.append(v)
        return tuple(out)

    def model_list(self, current: str | None = None) -> Any:
        """Refresh the model picker's choices (new cached runs appear, with readable names); its value is left
        as the user has it (`current` is ignored: an answer computed from an older value would put it back)."""
        return gr.Dropdown(choices=self.ex.model_choices())

    def status(self) -> tuple[str, Any]:
        """Start-up status line; the timer stops once the default models and their seeds are ready."""
        if not getattr(self.ex, "ready", True):
            return "**Starting:** loading torch, timm and the models (the first answer follows)…", gr.Timer(active=True)
        st = self.ex.status()
        training = [r for r in st["runs"] if not r["done"]]
        seeds = st.get("seed_runs") or {"done": 0, "total": 0}
        seed_text = (f" · extra seeds: {seeds['done']}/{seeds['total']} runs fine-tuned in the background"
                     if seeds["done"] < seeds["total"] else "")
        if st["stage"] == "failed":
            return f"**Preparing the default models failed:** {one_line(st['error'])}", gr.Timer(active=False)
        if st["stage"] == "ready" or (st["stage"] == "idle" and not training):
            extra = " · filling in curves and landscapes in the background" if st["pending"] else ""
            busy = bool(st["pending"]) or bool(seed_text)
            return f"**Ready**{seed_text}{extra}.", gr.Timer(active=busy)
        runs = " · ".join(r["text"] for r in training)
        return (f"**Preparing the default models** ({st['stage']}; first start only, cached afterwards): "
                f"{runs or 'loading…'}"), gr.Timer(active=True)
