"""The Compose tab (issue 20): tick the steps of a deployment pipeline — SAM fine-tuning (CrAFT), BatchNorm
re-estimation (CNNs), a compensation — at each model's claims-ledger compression endpoint, and see the pipeline's
accuracy, costs and the waterfall from the plain compressed model. Layout and handlers; the computations are
:class:`craftlab_app.compose.service.ComposeView`."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from ..common.errors import user_errors
from .service import COMPENSATIONS, MODELS, ComposeView
from .texts import INTRO

__all__ = ["build_tab", "result_text", "waterfall"]


def result_text(a: dict[str, Any]) -> str:
    """The pipeline's numbers in words, tagged with its label."""
    p = a["p"]
    sig = "" if not math.isfinite(p) else (" (significant)" if p < 0.05 else " (not significant)")
    gain = ("" if not a["order"] else f"\n\nPaired gain over the plain compressed model (AdamW → {a['setting']}): "
            f"**{100 * a['gain']:+.1f} pts** [95 % CI {100 * a['ci_low']:+.1f}, {100 * a['ci_high']:+.1f}], "
            f"p = {p:.2g}{sig}.")
    return (f"### {a['tag']}\n<span class='big'>{100 * a['accuracy']:.1f}%</span> ± {100 * a['sd']:.1f} test accuracy "
            f"(mean ± sd of {a['n']} paired seeds; plain compressed {100 * a['plain']:.1f}%){gain}\n\n"
            f"weights {a['size_mb']:.3f} MB · {a['bitops'] / 1e6:.1f} M BitOPs (Conv/Linear"
            + (f"; {a['bitops_total'] / 1e6:.1f} M with the attention matmuls as they run" if
               math.isfinite(a.get("bitops_total", float("nan"))) and a["bitops_total"] != a["bitops"] else "")
            + f") · {a['params_added']:,} parameters "
            + (f"added · fine-tuning + supernet training {a['train_s']:.0f} s · subnet search {a['calib_s']:.2f} s\n\n"
               if "supernet pick" in a["label"] else
               f"added · fine-tuning {a['train_s']:.0f} s · compression + calibration {a['calib_s']:.2f} s\n\n")
            + f"_From {a['source']}._")


def waterfall(a: dict[str, Any]) -> Any:
    """The waterfall of the ticked steps (an empty figure, titled, when none is ticked)."""
    import plotly.graph_objects as go

    from craftlab.viz.compose_figures import waterfall_figure

    title = f"From the compressed model through the ticked steps {a['tag']}"
    if a["waterfall"] is None:
        return go.Figure(layout=dict(title=f"No step ticked: the plain compressed model {a['tag']}", height=420,
                                     template="plotly_white"))
    return waterfall_figure({" → ".join(a["order"]): a["waterfall"]}, title=title)


def build_tab(service: ComposeView | None = None) -> ComposeView:
    """The tab inside the caller's Blocks; returns its service."""
    service = service or ComposeView()

    def show(model: str, sam: bool, bn: bool, compensation: str, supernet: bool) -> tuple[Any, Any]:
        try:
            with user_errors():
                a = service.answer(model, bool(sam), bool(bn), compensation, bool(supernet))
        except gr.Error as err:
            return f"### [{model}]\n**This pipeline means nothing:** {err.message}", gr.skip()
        except ValueError as err:
            return f"### [{model}]\n**This pipeline means nothing:** {err}", gr.skip()
        return result_text(a), waterfall(a)

    with gr.Tab("Compose", id="compose") as tab:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Radio(list(MODELS), value=MODELS[0], label="model", elem_id="compose-model")
            sam = gr.Checkbox(False, label="fine-tune with SAM (CrAFT)", elem_id="compose-sam")
            bn = gr.Checkbox(False, label="re-estimate BatchNorm statistics (CNNs)", elem_id="compose-bn")
            comp = gr.Radio(list(COMPENSATIONS), value="none", label="compensation", elem_id="compose-comp")
            supernet = gr.Checkbox(False, label="supernet pick ≤ 5 % BitOPs instead of PTQ (ViTs)",
                                   elem_id="compose-supernet")
        text = gr.Markdown(elem_id="compose-result")
        plot = gr.Plot(elem_id="compose-waterfall")
        inputs = [model, sam, bn, comp, supernet]
        gr.on([tab.select, *[x.change for x in inputs]], show, inputs=inputs, outputs=[text, plot],
              api_name="compose", trigger_mode="always_last", concurrency_limit=1, show_progress="minimal")
    return service
