"""The Explore tab's layout and wiring (:func:`build_tab`); its handlers are
:class:`~craftlab_app.explore.handlers.Callbacks`, its computations :class:`~craftlab_app.explore.service.Explorer`.

Every control's ``change`` (typing in the slider's box, arrow keys, drags, presets, the URL) runs ``/compress``,
which validates the input once (``make_setting``) and opens a new *view* of the session
(:mod:`craftlab_app.explore.session`); the follow-ups draw every panel from that view, titled with its tag, and
drop their answer when a newer view replaced it. ``trigger_mode="always_last"`` keeps at most one pending request
per event.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .handlers import Callbacks
from .links import (
    BITS_CHOICES,
    COMPENSATION_CHOICES,
    INITIAL,
    METHODS,
    PATTERN_CHOICES,
    RECIPE_CHOICES,
    SPARSITY_MAX,
)
from .panels import PRESETS
from .texts import PLANE_NOTE

__all__ = ["build_tab"]


def _preset_fn(cb: Callbacks, key: str) -> Any:
    def preset() -> tuple[Any, ...]:
        return cb.preset(key)

    return preset


def _controls(choices: list[tuple[str, str]], first: str, info: str) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["model"] = gr.Dropdown(choices=choices, value=first, label="model", allow_custom_value=True, elem_id="model",
                             info=info)
    c["method"] = gr.Radio(list(METHODS), value=INITIAL["method"], label="pruning method",
                           elem_id="method")
    c["sparsity"] = gr.Slider(0.0, SPARSITY_MAX, value=INITIAL["sparsity"], step=0.05, label="sparsity",
                              elem_id="sparsity", info="fraction of weights zeroed")
    c["pattern"] = gr.Dropdown(PATTERN_CHOICES, value=INITIAL["pattern"], label="N:M pattern", visible=False,
                               elem_id="pattern", info="keeps N of every M weights (2:4 = 50 % sparse)")
    with gr.Row():
        c["w_bits"] = gr.Dropdown(BITS_CHOICES, value=INITIAL["w_bits"], label="weight bits", allow_custom_value=True,
                                  elem_id="w_bits", min_width=100)
        c["a_bits"] = gr.Dropdown(BITS_CHOICES, value=INITIAL["a_bits"], label="activation bits",
                                  allow_custom_value=True, elem_id="a_bits", min_width=100)
    c["granularity"] = gr.Radio(["channel", "tensor"], value=INITIAL["granularity"],
                                label="weight quantization granularity", elem_id="granularity")
    c["bn"] = gr.Checkbox(False, label="re-estimate BatchNorm statistics after compression (CNNs)", elem_id="bn")
    c["recipe"] = gr.Radio(RECIPE_CHOICES, value=INITIAL["recipe"], label="quantization recipe", elem_id="recipe",
                           info="repq: RepQ-ViT (ViTs only; quantized attention)")
    c["compensation"] = gr.Radio(COMPENSATION_CHOICES, value=INITIAL["compensation"], label="compensation",
                                 elem_id="compensation",
                                 info="closed-form fit on the calibration set after compression (QwT papers)")
    return c


def build_tab(cb: Callbacks, choices: list[tuple[str, str]], first: str, info: str, page: gr.Blocks) -> Any:
    """The Explore tab, in the current ``gr.Tabs`` context, wired (`page`: the Blocks, whose load event opens
    the URL's view). `choices`, `first`, `info`: the model picker's. Returns the model picker (the Train tab
    picks a run it trained there; the shell refreshes its choices when the tabs change)."""
    with gr.Tab("Explore", id="explore"):
        with gr.Row(elem_id="presets"):
            gr.Markdown("**Guided tour:**")
            preset_buttons = {p.key: gr.Button(p.title, size="sm", elem_id=f"preset-{p.key}") for p in PRESETS}
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                c = _controls(choices, first, info)
                kind = gr.Radio(["contour", "surface"], value=INITIAL["kind"], label="2-D landscape as",
                                elem_id="kind")
                scale = gr.Radio(["log10", "linear"], value=INITIAL["scale"], label="loss axis",
                                 elem_id="scale")
                link = gr.Markdown(elem_id="link")
                export_btn = gr.Button("Export this view (JSON + HTML)", size="sm", elem_id="export")
                files = gr.File(label="exported files", file_count="multiple", elem_id="export-files",
                                visible=False)
                with gr.Accordion("/compress answer (JSON)", open=False):
                    answer = gr.JSON(label="answer", elem_id="answer")
            with gr.Column(scale=4):
                summary = gr.Markdown(elem_id="summary")
                guide = gr.Markdown(elem_id="guide")
                with gr.Row(equal_height=True):
                    with gr.Column(elem_classes="arm-card", elem_id="card-plain"):
                        card_plain = gr.Markdown(elem_id="acc-plain")
                        sharp_plain = gr.Markdown(elem_id="sharp-plain")
                    with gr.Column(elem_classes="arm-card", elem_id="card-craft"):
                        card_craft = gr.Markdown(elem_id="acc-craft")
                        sharp_craft = gr.Markdown(elem_id="sharp-craft")
                verdict = gr.Markdown(elem_id="verdict")
                sharp_note = gr.Markdown(elem_id="sharp-note")
                with gr.Row():
                    sharp_gap = gr.Plot(label="sharpness gap", elem_id="sharp-gap")
                    with gr.Column():
                        sharp_measure = gr.Radio([("λmax", "lambda_max"), ("Hessian trace", "trace"),
                                                  ("ε-sharpness", "eps_sharpness")], value="lambda_max",
                                                 label="scatter: sharpness measure", elem_id="sharp-measure")
                        sharp_scatter = gr.Plot(label="accuracy drop vs sharpness", elem_id="sharp-scatter")
                with gr.Row():
                    curve_sparsity = gr.Plot(label="accuracy vs sparsity", elem_id="curve-sparsity")
                    curve_bits = gr.Plot(label="accuracy vs bits", elem_id="curve-bits")
        path_plot = gr.Plot(label="1-D: loss along the compression direction", elem_id="path")
        with gr.Row():
            plane_plain = gr.Plot(label="2-D landscape: AdamW", elem_id="plane-plain")
            plane_craft = gr.Plot(label="2-D landscape: CrAFT", elem_id="plane-craft")
        gr.Markdown(PLANE_NOTE, elem_id="plane-note")
        refresh_timer = gr.Timer(1.0, active=False)

        # ---------------------------------------------------------------- events
        view = gr.State(None)  # the session's current View (model, Setting, answer): validated once
        shown = gr.State(None)  # what the refresh timer drew last for the view
        api_landscape = gr.Button(visible=False)  # carries the stateless /landscape API endpoint
        setting_inputs = [c[k] for k in ("model", "method", "sparsity", "w_bits", "a_bits", "granularity", "pattern")]
        extra_inputs = [c["recipe"], c["compensation"]]  # optional trailing inputs of /compress and /landscape
        panel_outputs = [summary, card_plain, card_craft, verdict, guide, curve_sparsity, curve_bits, c["bn"]]
        landscape_outputs = [path_plot, plane_plain, plane_craft]
        sharp_outputs = [sharp_plain, sharp_craft, sharp_note, sharp_gap, sharp_scatter]
        probe_kw = {"concurrency_limit": 1, "concurrency_id": "landscape", "show_progress": "minimal",
                    "trigger_mode": "always_last"}
        controls = [c[k] for k in ("model", "method", "sparsity", "w_bits", "a_bits", "granularity", "pattern", "bn",
                                   "recipe", "compensation")]
        changes = [x.change for x in controls]
        dep = gr.on(changes, cb.compress, inputs=[*setting_inputs, c["bn"], *extra_inputs], outputs=[answer, view],
                    api_name="compress", trigger_mode="always_last", concurrency_limit=4, show_progress="minimal",
                    preprocess=False,  # raw values reach make_setting, whose messages name the parameter
                    show_progress_on=summary)  # visible while a model's arms are fine-tuned
        # page load: one event sets the controls from the link (if any) and computes that view, so no other
        # view is shown first and no late load answer puts the default model back (craftlab_app.links)
        opened = page.load(cb.open_link, inputs=[*controls, kind, scale],
                           outputs=[*controls, kind, scale, answer, view],
                           api_name="open_link", concurrency_limit=4, show_progress="minimal", preprocess=False,
                           show_progress_on=summary)

        def follow(first: Any, suffix: str) -> None:
            """The panels, seeds, sharpness, landscapes and link of the view `first` opened."""
            first.success(cb.panels, inputs=view, outputs=[*panel_outputs, refresh_timer], api_name="panels" + suffix,
                          show_progress="hidden", concurrency_limit=None, trigger_mode="always_last").success(
                cb.seeds, inputs=view, outputs=panel_outputs, api_name="seeds" + suffix, show_progress="hidden",
                concurrency_limit=2, trigger_mode="always_last")
            first.success(cb.sharpness, inputs=[view, sharp_measure], outputs=sharp_outputs,
                          api_name="sharpness" + suffix, show_progress="minimal", trigger_mode="always_last",
                          concurrency_limit=1, concurrency_id="sharpness")
            first.success(cb.landscape_of, inputs=[view, kind, scale], outputs=landscape_outputs,
                          api_name="landscape_view" + suffix, preprocess=False, **probe_kw)
            first.success(cb.link, inputs=[view, kind, scale], outputs=link, api_name="link" + suffix, queue=False,
                          show_progress="hidden", preprocess=False)

        follow(dep, "")
        follow(opened, "_on_load")
        sharp_measure.change(cb.sharpness, inputs=[view, sharp_measure], outputs=sharp_outputs,
                             api_name="sharp_measure", show_progress="minimal", trigger_mode="always_last",
                             concurrency_limit=1, concurrency_id="sharpness")
        gr.on([kind.change, scale.change], cb.landscape_of, inputs=[view, kind, scale], outputs=landscape_outputs,
              api_name="landscape_kind", preprocess=False, **probe_kw)
        gr.on([kind.change, scale.change], cb.link, inputs=[view, kind, scale], outputs=link, api_name="link_kind",
              queue=False, show_progress="hidden", preprocess=False)
        refresh_timer.tick(cb.refresh, inputs=[view, kind, scale, shown], preprocess=False,
                           outputs=[*panel_outputs, *landscape_outputs, refresh_timer, shown], api_name="refresh",
                           show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
        c["method"].change(cb.method_ui, inputs=[c["method"], c["pattern"], c["sparsity"]],
                           outputs=[c["sparsity"], c["pattern"]], api_name="method_ui", queue=False,
                           show_progress="hidden")
        c["pattern"].change(cb.method_ui, inputs=[c["method"], c["pattern"], c["sparsity"]],
                            outputs=[c["sparsity"], c["pattern"]], api_name="pattern_ui", queue=False,
                            show_progress="hidden")
        for key, btn in preset_buttons.items():
            btn.click(_preset_fn(cb, key), outputs=controls, api_name=f"preset_{key}", queue=False)
        export_btn.click(cb.export, inputs=[view, kind, scale], outputs=files, api_name="export", preprocess=False)
        api_landscape.click(cb.landscape, inputs=[*setting_inputs, kind, scale, *extra_inputs],
                            outputs=landscape_outputs,
                            api_name="landscape", concurrency_limit=1, concurrency_id="landscape", preprocess=False)
    return c["model"]
