"""Figures of the composition study: the waterfall (plain compressed model → full pipeline, step by step,
each increment with its paired 95 % CI, one panel per order) and the interaction plot of two steps.

Example::

    from craftlab.analysis import factorial
    from craftlab.viz.compose_figures import interaction_figure, waterfall_figure
    table = craftlab.compose("resnet-tiny", seeds=5)
    waterfall_figure({"BN first": factorial.waterfall(table, ["BN", "QwT-v2", "SAM"]),
                      "SAM first": factorial.waterfall(table, ["SAM", "QwT-v2", "BN"])}, title="resnet-tiny")
    interaction_figure(table, "SAM", "QwT-v2")
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analysis.factorial import ALL_OFF, FACTORS, STEPS
from ..analysis.stats import mean_ci

__all__ = ["interaction_figure", "waterfall_figure"]


def waterfall_figure(waterfalls: dict[str, Any], title: str = "") -> Any:
    """One waterfall panel per order (`waterfalls`: order name → :func:`~craftlab.analysis.factorial.waterfall`
    table): the compressed model's accuracy, then each step's paired gain (bar from the previous level, 95 % CI
    as error bars), then the full pipeline. Accuracies in %."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(waterfalls), subplot_titles=list(waterfalls), shared_yaxes=True)
    for col, wf in enumerate(waterfalls.values(), start=1):
        start = wf.iloc[0]
        steps = wf[wf["kind"] == "step"]
        fig.add_trace(go.Bar(x=["compressed"], y=[100 * start["level"]], marker_color="#888", showlegend=False,
                             hovertemplate="compressed: %{y:.1f} %<extra></extra>"), row=1, col=col)
        base = 100 * start["level"]
        for r in steps.to_dict("records"):
            d = 100 * r["mean_diff"]
            hi, lo = 100 * (r["ci_high"] - r["mean_diff"]), 100 * (r["mean_diff"] - r["ci_low"])
            fig.add_trace(go.Bar(x=[f"+ {r['step']}"], y=[d], base=[base], showlegend=False,
                                 marker_color="#2a9d8f" if d >= 0 else "#e76f51",
                                 error_y=dict(type="data", symmetric=False, array=[hi], arrayminus=[lo]),
                                 text=[f"{d:+.1f}"], textposition="outside",
                                 hovertemplate=(f"{r['step']}: {d:+.1f} pp [{100 * r['ci_low']:+.1f}, "
                                                f"{100 * r['ci_high']:+.1f}], p = {r['p']:.2g}<extra></extra>")),
                          row=1, col=col)
            base += d
        fig.add_trace(go.Bar(x=["full pipeline"], y=[base], marker_color="#264653", showlegend=False,
                             hovertemplate="full pipeline: %{y:.1f} %<extra></extra>"), row=1, col=col)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    fig.update_layout(title=title or "From the compressed model to the full pipeline", barmode="overlay",
                      template="plotly_white", height=420)
    return fig


def interaction_figure(table: Any, step_x: str, step_line: str, value: str = "accuracy", title: str = "") -> Any:
    """Mean accuracy (95 % CI over seeds) with `step_x` off/on on the x axis, one line per level of
    `step_line`, averaged over the other factors' levels present for all four cells. Parallel lines: the two
    steps add up; converging lines: their gains overlap."""
    import plotly.graph_objects as go

    fx, onx, offx = STEPS[step_x]
    fl, onl, offl = STEPS[step_line]
    t = table[~table["bn_last"].astype(bool)].copy() if "bn_last" in table else table.copy()
    for f, off in zip(FACTORS, ALL_OFF):
        if f not in t:
            t[f] = off
    others = [f for f in FACTORS if f not in (fx, fl)]  # keep the other factors' levels that have all four cells
    four = t.groupby(others)[[fx, fl]].apply(lambda g: len({(a, b) for a, b in zip(g[fx], g[fl])}) == 4)
    t = t.set_index(others).loc[four[four].index].reset_index() if others else t
    fig = go.Figure()
    for lvl, name in ((offl, f"{step_line} off"), (onl, f"{step_line} on")):
        ys, lows, highs = [], [], []
        for xl in (offx, onx):
            part = t[(t[fx] == xl) & (t[fl] == lvl)]
            per_seed = part.groupby("seed")[value].mean().to_numpy()
            m, lo, hi = mean_ci(per_seed) if len(per_seed) else (np.nan, np.nan, np.nan)
            ys.append(100 * m)
            lows.append(100 * (m - lo) if np.isfinite(lo) else 0)
            highs.append(100 * (hi - m) if np.isfinite(hi) else 0)
        fig.add_trace(go.Scatter(x=[f"{step_x} off", f"{step_x} on"], y=ys, mode="lines+markers", name=name,
                                 error_y=dict(type="data", symmetric=False, array=highs, arrayminus=lows)))
    fig.update_layout(title=title or f"{step_x} × {step_line}", yaxis_title="test accuracy (%)",
                      template="plotly_white", height=360)
    return fig
