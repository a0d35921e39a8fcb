"""The Adapt tab (issue 13): frozen-backbone adaptation methods compared on accuracy, trainable parameters,
training memory, time and bytes per image — live runs (cached) beside the benchmark's reference table.
Layout, handlers and figures; the computations are :class:`craftlab_app.adapt.service.AdaptView`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..common.errors import user_errors
from .service import CHEAP, METHODS, AdaptView
from .texts import INTRO

__all__ = ["build_tab", "figures"]


def figures(summary: Any, tag: str = "") -> tuple[Any, Any]:
    """Accuracy (± sd over seeds) against training memory and against bytes sent per image, one point per
    method and source (live runs: filled circles; the benchmark's reference: open diamonds)."""
    import plotly.graph_objects as go

    figs = []
    for x, title in (("training memory (MB)", "test accuracy vs training memory"),
                     ("bytes / image", "test accuracy vs bytes sent per image")):
        fig = go.Figure(layout=dict(title=f"{tag} {title}".strip(), height=440, xaxis=dict(title=x, type="log"),
                                    yaxis=dict(title="test accuracy (%)"), legend=dict(orientation="h", y=-0.25)))
        if len(summary):  # a log axis ignores the labels: half a decade of room for them
            lo, hi = math.log10(summary[x].min()), math.log10(summary[x].max())
            fig.update_xaxes(range=[lo - 0.5, hi + 0.5])
        kinds = ["benchmark" if str(v).startswith("benchmark") else "live" for v in summary["source"]]
        for kind in dict.fromkeys(kinds):
            part = summary[[k == kind for k in kinds]]
            fig.add_scatter(x=part[x], y=part["test accuracy (%)"], mode="markers+text",
                            text=[f"{m} ({e} ep)" for m, e in zip(part["method"], part["epochs"])],
                            textposition="top center", textfont=dict(size=10),
                            name="benchmark (reference)" if kind == "benchmark" else "live runs (this app)",
                            error_y=dict(type="data", array=part["± sd"].fillna(0).tolist()),
                            marker=dict(size=11, symbol="circle" if kind == "live" else "diamond-open"))
        figs.append(fig)
    return figs[0], figs[1]


def _seeds(n: Any) -> list[int]:
    """Seeds 0 … n−1 of the seeds slider (1 to 3); a value outside is refused by name, never clamped."""
    try:
        k = float(n)
    except (TypeError, ValueError):
        k = float("nan")
    if not (k == k and k.is_integer() and 1 <= k <= 3):
        raise ValueError(f"seeds must be a whole number from 1 to 3, got {n!r}")
    return list(range(int(k)))


def build_tab(service: AdaptView | None = None) -> AdaptView:
    """The Adapt tab, inside the caller's ``gr.Blocks`` / ``gr.Tabs``; returns its service."""
    av = service or AdaptView()

    def show(methods: list[str], epochs: float, seeds: float,
             progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:  # noqa: B008
        with user_errors():
            methods, n_epochs, seed_list = av.check(methods, epochs, _seeds(seeds))
        tag = (f"[{', '.join(methods)} · {n_epochs} epoch{'s' * (n_epochs != 1)} · {len(seed_list)} "
               f"seed{'s' * (len(seed_list) != 1)}]")
        if av.busy is not None:  # one request at a time: a second click is answered, not silently dropped
            yield (f"**Busy:** {av.busy}. This tab trains one request at a time: press again when it is done, or "
                   "press **Stop**.", gr.skip(), gr.skip(), gr.skip())
            return
        av.busy = f"{tag} starting"
        av.clear_stop()
        try:
            yield (f"**{tag}** training what is not cached yet (one run at a time)…", gr.skip(), gr.skip(), gr.skip())
            with user_errors():
                rows = av.run(methods, n_epochs, seed_list, progress=lambda f, d: progress(f, desc=d), tag=tag)
            stopped = av.stopping
        finally:
            av.busy = None
            av.clear_stop()
        table = av.summary(rows + av.reference())
        now = sum(r["source"] == "live run (now)" for r in rows)
        head = (f"**{tag} stopped** after {len(rows)} of {len(methods) * len(seed_list)} run(s)" if stopped
                else f"**{tag}** {len(rows)} live run(s)")
        yield (f"{head}: {now} trained now, {len(rows) - now} read from the cache; the benchmark's rows are the "
               "reference.", table, *figures(table, tag))

    def opened() -> tuple[Any, ...]:
        rows = av.cached_rows()
        table = av.summary(rows + av.reference())
        if av.busy is not None:  # coming back to the tab during a run: the run's status stays
            text: Any = f"**Running:** {av.busy}…"
        else:
            text = (f"{len(rows)} cached live run(s) and the benchmark's reference below; tick methods and press "
                    "the button to train more." if rows or len(table) else "Nothing cached yet: tick methods and "
                    "press the button.")
        return (text, table, *figures(table))

    def stop() -> str:
        return ("**Stopping** after the current run (one method and seed)…" if av.stop()
                else "Nothing is training.")

    def estimate(methods: list[str], epochs: float, seeds: float) -> str:
        try:
            return av.estimate(methods, epochs, _seeds(seeds))
        except ValueError as err:
            return f"⚠ {err}"

    with gr.Tab("Adapt", id="adapt") as tab:
        gr.Markdown(INTRO, elem_id="adapt-intro")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                methods = gr.CheckboxGroup(list(METHODS), value=list(CHEAP), label="methods",
                                           elem_id="adapt-methods",
                                           info="the estimate below is from measured times per epoch")
                epochs = gr.Slider(1, 30, value=2, step=1, label="epochs", elem_id="adapt-epochs")
                seeds = gr.Slider(1, 3, value=1, step=1, label="seeds (0, 1, …)", elem_id="adapt-seeds")
                estimate_md = gr.Markdown(elem_id="adapt-estimate")
                with gr.Row():
                    go = gr.Button("Train and compare", variant="primary", elem_id="adapt-run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="adapt-stop", min_width=80)
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="adapt-status")
                table = gr.Dataframe(label="methods side by side", elem_id="adapt-table", interactive=False,
                                     wrap=True)
        with gr.Row():
            fig_mem = gr.Plot(label="accuracy vs training memory", elem_id="adapt-memory")
            fig_bytes = gr.Plot(label="accuracy vs bytes per image", elem_id="adapt-bytes")
    outputs = [status, table, fig_mem, fig_bytes]
    tab.select(opened, outputs=outputs, api_name="adapt_open", show_progress="hidden")
    go.click(show, inputs=[methods, epochs, seeds], outputs=outputs, api_name="adapt", concurrency_limit=2,
             concurrency_id="adapt", trigger_mode="multiple",  # a second click is answered "busy"
             preprocess=False)  # raw values reach av.check, which names a bad one (no Gradio validation traceback)
    stop_btn.click(stop, outputs=status, api_name="adapt_stop", queue=False)
    gr.on([tab.select, methods.change, epochs.change, seeds.change], estimate, inputs=[methods, epochs, seeds],
          outputs=estimate_md, api_name="adapt_estimate", queue=False, show_progress="hidden", preprocess=False)
    return av
