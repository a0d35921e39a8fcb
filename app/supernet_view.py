"""The Supernet tab (issue 12): a BitOPs budget → the best searched subnet of the cached mixed-precision supernet,
its per-layer bits (a heatmap), its accuracy and its point on the Pareto front. Layout, handlers and figures; the
computations are :class:`craftlab_app.supernet_service.SupernetView`."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .callbacks import user_errors
from .supernet_service import SupernetView

__all__ = ["build_tab", "bits_figure", "pareto_figure"]

INTRO = """**A mixed-precision supernet trained with LoRA** (issue 12). vit-tiny fine-tuned on digits becomes one
supernet whose every Linear runs at any of W{2,3,4,6,8} × A{4,6,8}: frozen weights, one LoRA adapter per
bit-width, the sandwich rule with progressively lower bits. An evolutionary search picks per-layer bits under
BitOPs budgets; here a budget (in % of the FP32 model's BitOPs) selects the best subnet the search evaluated
(validation accuracy), and its test accuracy is measured. The paper claims ≈ 95 % BitOPs reduction (5 % of FP32)
without degradation; notebook 05 and the benchmark test it over 3 seeds (here: about −1 pt at ~4 % of FP32, not
confirmed as "no degradation"). The first visit trains and searches once (a few minutes on 2 cores); afterwards
everything comes from the cache."""


def bits_figure(pick: dict[str, Any], tag: str) -> Any:
    """Per-layer weight and activation bits of the chosen subnet (2 × layers heatmap)."""
    import plotly.graph_objects as go

    names = [n.replace("blocks.", "b").replace(".attn", "").replace(".mlp", "") for n in pick["layers"]]
    z = [pick["w_bits"], pick["a_bits"]]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=["weights", "activations"], zmin=2, zmax=8, colorscale="Viridis",
                               text=z, texttemplate="%{text}", colorbar=dict(title="bits")),
                    layout=dict(title=f"{tag} per-layer bits", height=260, margin=dict(t=50, b=60)))
    return fig


def pareto_figure(sv: SupernetView, pick: dict[str, Any] | None, tag: str) -> Any:
    """Every subnet the search evaluated, its Pareto front, the uniform subnets and the chosen one (★)."""
    import plotly.graph_objects as go

    fp32 = sv.refs["FP32"]
    pct = lambda ps: [100 * p["bitops"] / fp32 for p in ps]  # noqa: E731
    acc = lambda ps: [100 * p["accuracy"] for p in ps]  # noqa: E731
    fig = go.Figure(layout=dict(title=f"{tag} validation accuracy vs BitOPs", height=420,
                                xaxis=dict(title="BitOPs (% of FP32)", type="log"),
                                yaxis=dict(title="validation accuracy (%)"), legend=dict(orientation="h", y=-0.2)))
    fig.add_scatter(x=pct(sv.points), y=acc(sv.points), mode="markers", name="subnets evaluated by the search",
                    marker=dict(color="lightgray", size=6), text=[p["label"] for p in sv.points])
    front = sorted(sv.report.pareto, key=lambda p: p["bitops"])
    fig.add_scatter(x=pct(front), y=acc(front), mode="lines+markers", name="Pareto front", line_shape="hv")
    fig.add_scatter(x=pct(sv.uniform), y=acc(sv.uniform), mode="markers+text", name="uniform subnets",
                    text=[p["label"] for p in sv.uniform], textposition="bottom center", marker_symbol="x")
    if pick is not None:
        fig.add_vline(x=pick["budget_pct"], line_dash="dot", annotation_text=f"budget {pick['budget_pct']:g}%")
        fig.add_scatter(x=[pick["pct_fp32"]], y=[100 * pick["val_accuracy"]], mode="markers", name="chosen",
                        marker=dict(symbol="star", size=18, color="crimson"))
    return fig


def build_tab(service: SupernetView | None = None) -> SupernetView:
    """The Supernet tab, inside the caller's ``gr.Blocks`` / ``gr.Tabs``; returns its service."""
    sv = service or SupernetView()

    def render(budget: float) -> tuple[Any, Any, Any]:
        if not sv.ready:
            return gr.skip(), gr.skip(), gr.skip()
        with user_errors():
            pick = sv.choose(budget)
        tag = f"[budget {pick['budget_pct']:g}% of FP32]"
        text = (f"**{tag}** best subnet: **{pick['label']}** — {pick['pct_fp32']:.2f}% of FP32 BitOPs "
                f"({pick['pct_w8a8']:.0f}% of W8A8), {pick['size_mb'] * 1024:.0f} KiB; validation accuracy "
                f"{pick['val_accuracy']:.1%}, test accuracy {pick['test_accuracy']:.1%} (FP32 reference: the "
                "uniform W8A8 subnet on the plot).")
        return text, bits_figure(pick, tag), pareto_figure(sv, pick, tag)

    def tick(budget: float) -> tuple[Any, ...]:
        """Status while the supernet is prepared; the panels of `budget` once it is ready (timer off)."""
        sv.start()  # idempotent: the first opening of the tab starts the preparation
        if sv.ready or sv.error:
            out = render(budget) if sv.ready else (gr.skip(),) * 3
            return (sv.status(), gr.Timer(active=False), *out)
        return (sv.status(), gr.Timer(active=True), gr.skip(), gr.skip(), gr.skip())

    with gr.Tab("Supernet", id="supernet") as tab:
        gr.Markdown(INTRO)
        status = gr.Markdown(sv.status(), elem_id="supernet-status")
        timer = gr.Timer(1.0, active=False)
        budget = gr.Slider(1.0, 100.0, value=5.0, step=0.5, label="BitOPs budget (% of the FP32 model)",
                           elem_id="supernet-budget")
        result = gr.Markdown(elem_id="supernet-result")
        bits = gr.Plot(label="per-layer bits", elem_id="supernet-bits")
        pareto = gr.Plot(label="Pareto front", elem_id="supernet-pareto")
    panels = [status, timer, result, bits, pareto]
    tab.select(tick, inputs=budget, outputs=panels, api_name="supernet_open", show_progress="hidden")
    timer.tick(tick, inputs=budget, outputs=panels, api_name="supernet_status", show_progress="hidden")
    budget.change(render, inputs=budget, outputs=[result, bits, pareto], api_name="supernet_budget",
                  trigger_mode="always_last", show_progress="minimal")
    return sv
