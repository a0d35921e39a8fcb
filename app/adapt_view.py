"""The Adapt tab (issue 13): frozen-backbone adaptation methods compared on accuracy, trainable parameters,
training memory, time and bytes per image — live runs (cached) beside the benchmark's reference table.
Layout, handlers and figures; the computations are :class:`craftlab_app.adapt_service.AdaptView`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from .adapt_service import METHODS, AdaptView
from .callbacks import user_errors

__all__ = ["build_tab", "figures"]

INTRO = """**Adapt a frozen backbone** (LAST, MIET — issue 13). The zoo's vit-tiny (pretrained on mnist5k) adapts to
digits by: a **linear probe** on its final features; **LoRA** (rank 4 on qkv); **full** fine-tuning (± SAM);
**LAST**, a low-rank attention side network over the frozen blocks' tokens (the backbone runs without a graph, so
training memory is the side network's); **MIET**, the edge paradigm: a server sends each image's gathered features
once and the device trains a small attention adaptor on them. Memory is what training holds — tensors saved for
backward + gradients + optimizer state, measured on one batch of 64 — not the process's RSS. Bytes per image is
what a server sends a device per image (fine-tuning on the device: the image). The papers claim LAST trains in
≈ 30 % of PEFT's memory and 60 % of its time at *higher* accuracy; here LAST uses ~44 % of LoRA's memory but is
*less* accurate (benchmark: −2.3 pts, not significant after Holm). Rows marked *benchmark* are the reference
table (8 epochs, 3 seeds); *live run* rows are trained here on request and cached."""


def figures(summary: Any) -> tuple[Any, Any]:
    """Accuracy (± sd over seeds) against training memory and against bytes sent per image, one point per row."""
    import plotly.graph_objects as go

    figs = []
    for x, title in (("training memory (MB)", "accuracy vs training memory"), ("bytes / image",
                                                                                 "accuracy vs bytes sent per image")):
        fig = go.Figure(layout=dict(title=title, height=420, xaxis=dict(title=x, type="log"),
                                    yaxis=dict(title="test accuracy (%)"), legend=dict(orientation="h", y=-0.25)))
        for source, part in summary.groupby("source", sort=False):
            fig.add_scatter(x=part[x], y=part["test accuracy (%)"], mode="markers+text", text=part["method"],
                            textposition="top center", name=source,
                            error_y=dict(type="data", array=part["± sd"].fillna(0)),
                            marker=dict(size=11, symbol="circle" if source.startswith("live") else "diamond-open"))
        figs.append(fig)
    return figs[0], figs[1]


def build_tab(service: AdaptView | None = None) -> AdaptView:
    """The Adapt tab, inside the caller's ``gr.Blocks`` / ``gr.Tabs``; returns its service."""
    av = service or AdaptView()

    def show(methods: list[str], epochs: float, seeds: float,
             progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:  # noqa: B008
        with user_errors():
            methods, n_epochs, seed_list = av.check(methods, epochs, list(range(int(seeds or 1))))
        yield ("Training what is not cached yet…", gr.skip(), gr.skip(), gr.skip())
        with user_errors():
            rows = av.run(methods, n_epochs, seed_list, progress=lambda f, d: progress(f, desc=d))
        table = av.summary(rows + av.reference())
        fig_mem, fig_bytes = figures(table)
        yield (f"**[{', '.join(methods)} · {n_epochs} epochs · {len(seed_list)} seed(s)]** live rows below; the "
               "benchmark's rows are the reference.", table, fig_mem, fig_bytes)

    def reference() -> tuple[Any, Any, Any]:
        table = av.summary(av.reference())
        return (table, *figures(table))

    with gr.Tab("Adapt", id="adapt") as tab:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                methods = gr.CheckboxGroup(list(METHODS), value=["linear probe", "LAST", "MIET"], label="methods",
                                           elem_id="adapt-methods")
                epochs = gr.Slider(1, 30, value=4, step=1, label="epochs", elem_id="adapt-epochs")
                seeds = gr.Slider(1, 3, value=1, step=1, label="seeds (0, 1, …)", elem_id="adapt-seeds")
                go = gr.Button("Train and compare", variant="primary", elem_id="adapt-run")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="adapt-status")
                table = gr.Dataframe(label="methods side by side", elem_id="adapt-table", interactive=False)
        with gr.Row():
            fig_mem = gr.Plot(label="accuracy vs training memory", elem_id="adapt-memory")
            fig_bytes = gr.Plot(label="accuracy vs bytes per image", elem_id="adapt-bytes")
    tab.select(reference, outputs=[table, fig_mem, fig_bytes], api_name="adapt_reference", show_progress="hidden")
    go.click(show, inputs=[methods, epochs, seeds], outputs=[status, table, fig_mem, fig_bytes], api_name="adapt",
             concurrency_limit=1, concurrency_id="adapt", preprocess=True)
    return av
