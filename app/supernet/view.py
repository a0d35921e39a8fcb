"""The Supernet tab (issue 12): a BitOPs budget → the best subnet of the cached mixed-precision supernet, its
per-layer bits (a heatmap), its accuracy and its point on the Pareto front (beside the uniform subnets and uniform
PTQ). Layout, handlers and figures; the computations are :class:`craftlab_app.supernet.service.SupernetView`.

The supernet is prepared in a background thread the first time the tab (or a model) is opened — a timer polls its
status, nothing blocks the page; afterwards every budget is a lookup on the cached Pareto front."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from .service import MODELS, SupernetView
from .texts import INTRO

__all__ = ["INTRO", "bits_figure", "build_tab", "pareto_figure", "result_text"]


def _tag(pick: dict[str, Any]) -> str:
    return f"[{pick['model']} · budget {pick['budget_pct']:g}% of {pick['reference']}]"


def result_text(pick: dict[str, Any]) -> str:
    """The chosen subnet in words, starting with its tag."""
    how = (f"searched live at this budget in {pick['search_s']:.1f} s ({pick['evaluated']} new subnets scored)"
           if pick.get("search_s") is not None else pick.get("how", "looked up"))
    rule = ""
    if pick.get("top_label") and pick["top_label"] != pick["label"]:
        rule = (f" The most accurate subnet found, {pick['top_label']} ({pick['top_val_accuracy']:.1%} validation), "
                f"is not reported: {pick['rule']}.")
    gap = (f" Validation − test: {100 * (pick['val_accuracy'] - pick['test_accuracy']):+.1f} pts for this pick, "
           f"{100 * pick['front_gap']:+.1f} pts on average over the Pareto front."
           if pick.get("front_gap") is not None else "")
    attn = "; attention matmuls included" if pick.get("attention") else ""
    return (f"**{_tag(pick)}** best subnet: **{pick['label']}** — {pick['pct_fp32']:.2f}% of FP32 BitOPs "
            f"({pick['pct_w8a8']:.0f}% of W8A8{attn}), {pick['size_mb'] * 1024:.0f} KiB of "
            f"weights; validation accuracy **{pick['val_accuracy']:.1%}**, test accuracy "
            f"**{pick['test_accuracy']:.1%}**. *{how}.*{rule}{gap}")


def bits_figure(pick: dict[str, Any], tag: str | None = None) -> Any:
    """Per-layer weight and activation bits of the chosen subnet (2 × layers heatmap)."""
    import plotly.graph_objects as go

    tag = tag or _tag(pick)
    short = {"blocks.": "b", ".attn": "", ".mlp": "", "layer": "L", ".conv": ".c", ".downsample": ".ds"}
    names = []
    for n in pick["layers"]:
        for a, b in short.items():
            n = n.replace(a, b)
        names.append(n)
    z = [pick["w_bits"], pick["a_bits"]]
    return go.Figure(go.Heatmap(z=z, x=names, y=["weights", "activations"], zmin=2, zmax=8, colorscale="Viridis",
                                text=z, texttemplate="%{text}", colorbar=dict(title="bits"),
                                hovertemplate="%{x} %{y}: %{z} bits<extra></extra>"),
                     layout=dict(title=f"{tag} per-layer bits of {pick['label']}", height=260,
                                 margin=dict(t=50, b=60, l=90)))


def _message_figure(message: str, height: int) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(layout=dict(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False)))
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="grey"))
    return fig


def pareto_figure(sv: SupernetView, pick: dict[str, Any] | None, tag: str, budget_pct: float | None = None) -> Any:
    """Every subnet the search scored, its Pareto front, the uniform subnets, uniform PTQ of the base model, the
    FP32 base, the budget (dotted) and the chosen subnet (★); validation accuracy against % of FP32 BitOPs."""
    import plotly.graph_objects as go

    fp32 = sv.refs["FP32"]
    pct = lambda ps: [100 * p["bitops"] / fp32 for p in ps]  # noqa: E731
    acc = lambda ps: [100 * p["accuracy"] for p in ps]  # noqa: E731
    fig = go.Figure(layout=dict(title=f"{tag} validation accuracy vs BitOPs", height=440,
                                xaxis=dict(title="BitOPs (% of FP32, attention matmuls included; log scale)",
                                           type="log"),
                                yaxis=dict(title="validation accuracy (%)"), legend=dict(orientation="h", y=-0.22)))
    fig.add_scatter(x=pct(sv.points), y=acc(sv.points), mode="markers", name="subnets scored by the search",
                    marker=dict(color="lightgray", size=6), text=[p["label"] for p in sv.points])
    fig.add_scatter(x=pct(sv.front), y=acc(sv.front), mode="lines+markers", name="Pareto front", line_shape="hv",
                    text=[p["label"] for p in sv.front])
    fig.add_scatter(x=pct(sv.uniform), y=acc(sv.uniform), mode="markers", name="uniform subnets",
                    text=[p["label"] for p in sv.uniform], marker=dict(symbol="x", size=9))
    ptq = [p for p in sv.ptq if p["label"] != "FP32"]
    fig.add_scatter(x=pct(ptq), y=acc(ptq), mode="markers", name="uniform PTQ (base model; float attention)",
                    text=[p["label"] for p in ptq], marker=dict(symbol="diamond-open", size=10))
    base = [p for p in sv.ptq if p["label"] == "FP32"]
    if base:
        fig.add_hline(y=100 * base[0]["accuracy"], line_dash="dash", line_color="gray",
                      annotation_text="FP32 base model", annotation_position="bottom right")
    budget = pick["budget_pct"] if pick is not None else budget_pct
    xs = pct(sv.points) + pct(ptq) + ([budget] if budget is not None else [])
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    fig.update_xaxes(range=[lo - 0.05 * (hi - lo) - 0.02, hi + 0.05 * (hi - lo) + 0.02])
    if budget is not None:  # (a log axis places annotations at log10(x): written out here)
        fig.add_vline(x=budget, line_dash="dot")
        fig.add_annotation(x=math.log10(budget), y=1, yref="paper", text=f"budget {budget:g}%", showarrow=False,
                           xanchor="left", yanchor="bottom")
    if pick is not None:
        fig.add_scatter(x=[pick["pct_fp32"]], y=[100 * pick["val_accuracy"]], mode="markers", name="chosen",
                        text=[pick["label"]], marker=dict(symbol="star", size=18, color="crimson"))
    return fig


def build_tab(service: SupernetView | None = None, models: tuple[str, ...] = MODELS) -> dict[str, SupernetView]:
    """The Supernet tab, inside the caller's ``gr.Blocks`` / ``gr.Tabs``. `service`: the view of its model (the
    others are created when picked). Returns the services by model (filled as models are picked)."""
    services: dict[str, SupernetView] = {service.model: service} if service is not None else {}
    choices = list(dict.fromkeys([*([service.model] if service is not None else []), *models]))

    def get(model: str) -> SupernetView:
        name = str(model or choices[0]).strip()
        if name not in choices:
            raise gr.Error(f"unknown model {name!r}; choose from {', '.join(choices)}", print_exception=False)
        return services.setdefault(name, SupernetView(name))

    def _refused(sv: SupernetView, budget: Any, err: Exception) -> tuple[Any, Any, Any]:
        tag = f"[{sv.model} · budget {str(budget).strip() or '(empty)'}]"
        return (f"**{tag}** {err}", _message_figure(f"{tag} no subnet for this budget", 260),
                pareto_figure(sv, None, tag, None))

    def render(model: str, budget: Any) -> Any:
        """Panels for the typed budget: a lookup, or a status line first and the panels after a live search."""
        sv = get(model)
        if not sv.ready:
            yield gr.skip(), gr.skip(), gr.skip()
            return
        try:
            value, pct = sv.parse(budget)
            if not sv.searched(budget):
                tag = f"[{sv.model} · budget {pct:g}% of FP32]"
                yield (f"**{tag}** searching subnets at this budget (a short live search; scores of subnets seen "
                       "before are reused)…", gr.skip(), gr.skip())
            pick = sv.choose(budget)
        except ValueError as err:  # out of range or not a budget: said in the panels, not a toast
            yield _refused(sv, budget, err)
            return
        yield result_text(pick), bits_figure(pick), pareto_figure(sv, pick, _tag(pick))

    def tick(model: str, budget: Any) -> tuple[Any, ...]:
        """Status while the model's supernet is prepared; its panels once ready (timer off)."""
        sv = get(model)
        sv.start()  # idempotent: the first opening of the tab (or of a model) starts the preparation
        if sv.ready:
            *_, panels = render(model, budget)
            return (sv.status(), gr.Timer(active=False), *panels)
        waiting = f"{sv.model}: preparing the supernet…"
        if sv.error:
            return (sv.status(), gr.Timer(active=False), "", _message_figure(waiting, 260),
                    _message_figure(sv.status(), 440))
        return (sv.status(), gr.Timer(active=True), "", _message_figure(waiting, 260), _message_figure(waiting, 440))

    with gr.Tab("Supernet", id="supernet") as tab:
        gr.Markdown(INTRO, elem_id="supernet-intro")
        with gr.Row():
            model = gr.Dropdown(choices, value=choices[0], label="model", elem_id="supernet-model", scale=1,
                                info="vit-tiny: notebook 05's supernet (per-bit LoRA); resnet-tiny: full weights, "
                                     "per-subnet BatchNorm")
            budget = gr.Textbox(value="5", label="BitOPs budget (% of the FP32 model's BitOPs; press Enter)",
                                elem_id="supernet-budget", scale=3,
                                info="5 = 5% = the paper's 95% reduction; also 120M or 1.2e8 BitOPs. BitOPs count "
                                     "Conv/Linear MACs·w·a bits and attention matmuls·a bits²")
        status = gr.Markdown(elem_id="supernet-status")
        timer = gr.Timer(1.0, active=False)
        result = gr.Markdown(elem_id="supernet-result")
        bits = gr.Plot(label="per-layer bits", elem_id="supernet-bits")
        pareto = gr.Plot(label="Pareto front", elem_id="supernet-pareto")
    panels = [status, timer, result, bits, pareto]
    tab.select(tick, inputs=[model, budget], outputs=panels, api_name="supernet_open", show_progress="hidden")
    timer.tick(tick, inputs=[model, budget], outputs=panels, api_name="supernet_status", show_progress="hidden")
    model.change(tick, inputs=[model, budget], outputs=panels, api_name="supernet_model", show_progress="hidden")
    budget.submit(render, inputs=[model, budget], outputs=[result, bits, pareto], api_name="supernet_budget",
                  trigger_mode="always_last", show_progress="hidden")
    return services
