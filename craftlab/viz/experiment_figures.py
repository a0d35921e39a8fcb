"""Figures of experiment tables (:mod:`craftlab.studies.experiments`): accuracy vs sparsity and vs bits with
seed bands, sharpness-vs-drop scatters, grouped bars. They take the tidy tables of ``sweep_runs`` /
``sharpness_table`` and draw with :mod:`craftlab.viz.plots`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .plots import PALETTE, TEMPLATE, accuracy_curve_figure, sharpness_scatter_figure

__all__ = ["accuracy_bar_figure", "bits_figure", "scatter_figure", "sparsity_figure"]


def sparsity_figure(df: pd.DataFrame, method: str = "wanda", title: str | None = None, **kwargs: Any) -> Any:
    """Accuracy vs unstructured sparsity for one pruning method, one line per arm, ±1 std band over seeds
    (the FP32 rows are drawn at sparsity 0)."""
    part = df[(df["kind"] == "fp") | ((df["kind"] == "prune") & (df["method"] == method) & df["pattern"].isna())]
    part = part.assign(sparsity=part["sparsity"].fillna(0.0).astype(float))
    title = title or f"{method} pruning: test accuracy vs sparsity (mean ± 1 std over seeds)"
    return _bands_without_markers(accuracy_curve_figure(part, x="sparsity", group="arm", title=title, **kwargs))


def _bands_without_markers(fig: Any) -> Any:
    # plotly draws markers on a scatter trace with < 20 points unless its mode says otherwise; the ±std
    # band polygons of accuracy_curve_figure set no mode, so their vertices would show as stray dots
    fig.update_traces(mode="lines", selector={"fill": "toself"})
    return fig


def bits_figure(df: pd.DataFrame, title: str | None = None, **kwargs: Any) -> Any:
    """Accuracy vs bit setting (x = w_bits × a_bits, BitOPs per MAC, log axis, labelled W·A·), one line per arm."""
    part = df[df["kind"] == "quant"]
    fig = _bands_without_markers(accuracy_curve_figure(
        part, x="bitops_per_mac", group="arm", reverse_x=True,
        title=title or "PTQ: test accuracy vs bits (mean ± 1 std over seeds)", **kwargs))
    ticks = part.drop_duplicates("bitops_per_mac").sort_values("bitops_per_mac")
    fig.update_xaxes(type="log", tickvals=ticks["bitops_per_mac"].tolist(),
                     ticktext=[f"{b} ({int(v)})" for b, v in zip(ticks["bits"], ticks["bitops_per_mac"])],
                     title="bits (w_bits × a_bits = BitOPs per MAC)")
    return fig


def scatter_figure(df: pd.DataFrame, x: str, y: str, color: str = "arm", label: str | None = "model",
                   title: str | None = None, identity: bool = False, **kwargs: Any) -> Any:
    """:func:`craftlab.plots.sharpness_scatter_figure` (points, least-squares line, Spearman ρ in the title)
    with one colour per arm and the legend to the right of the plot, where a long list of arms fits.
    ``identity=True`` adds the line y = x (for predicted-vs-measured plots)."""
    fig = sharpness_scatter_figure(df, x=x, y=y, color=color, label=label, title=title, **kwargs)
    if identity:
        lo = float(np.nanmin(df[[x, y]].to_numpy(float)))
        hi = float(np.nanmax(df[[x, y]].to_numpy(float)))
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name=f"{y} = {x}",
                        line={"color": "black", "dash": "dot", "width": 1})
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"},
                      margin={"r": 160})
    return fig


def accuracy_bar_figure(df: pd.DataFrame, x: str = "setting", group: str = "arm", y: str = "accuracy",
                        title: str | None = None, height: int = 380) -> Any:
    """Grouped bars of `y` per `x` (e.g. settings) and `group` (e.g. arms); values printed on the bars."""
    fig = go.Figure()
    for k, (g, part) in enumerate(df.groupby(group, sort=False)):
        fig.add_trace(go.Bar(x=part[x], y=part[y], name=str(g), marker_color=PALETTE[k % len(PALETTE)],
                             text=[f"{v:.1%}" if y == "accuracy" else f"{v:.3g}" for v in part[y]],
                             textposition="outside"))
    fig.update_layout(barmode="group", title=title, height=height, template=TEMPLATE, yaxis_title=y,
                      margin={"l": 60, "r": 20, "t": 60 if title else 30, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0})
    if y == "accuracy":  # the axis starts at 0 and stays put between settings, so gaps read at their true size
        fig.update_yaxes(range=[0.0, 1.08], tickformat=".0%")
    return fig
