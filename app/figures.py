"""Plotly figures of :mod:`craftlab_app.service` results: both fine-tuning arms side by side or overlaid.

Every figure has an explicit height (Gradio renders autosized plotly figures at zero height). The
plain arm is blue and the CrAFT (SAM) arm red throughout, in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from craftlab.probes.landscape import LineResult, PathResult, PlaneResult
from craftlab.settings import Setting
from craftlab.viz.plots import (
    PALETTE,
    TEMPLATE,
    accuracy_curve_figure,
    compression_path_figure,
    line_figure,
    plane_figure,
)

__all__ = ["ROLE_COLORS", "bits_curve_figure", "empty_figure", "path_figure", "plane_figures",
           "sparsity_curve_figure", "training_figure"]

ROLE_COLORS = {"plain": PALETTE[0], "craft": PALETTE[1]}
CURVE_HEIGHT = 360
LANDSCAPE_HEIGHT = 420
ACC = "test accuracy (%)"


def _layout(fig: go.Figure, title: str | None, height: int, **kw: Any) -> go.Figure:
    """The app's frame of a figure. Differs from ``craftlab.viz.plots``' own frame only in the legend (left,
    just above the plot, where the app's long arm labels fit) and a taller top margin for its long titles."""
    fig.update_layout(title=title, height=int(height), template=TEMPLATE, autosize=True,
                      margin={"l": 60, "r": 20, "t": 70 if title else 30, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0.0},
                      **kw)
    return fig


def empty_figure(message: str, height: int = CURVE_HEIGHT) -> go.Figure:
    """A blank figure carrying `message` (while something is being computed, or on no data)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 14, "color": "grey"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, None, height)


def _recolor(fig: go.Figure, roles: Mapping[str, str]) -> None:
    """Give each arm's traces its role colour (accuracy_curve_figure colours by order)."""
    for tr in fig.data:
        role = roles.get(str(tr.legendgroup or tr.name))
        if role is None:
            continue
        c = ROLE_COLORS.get(role, PALETTE[2])
        if tr.fill == "toself":
            h = c.lstrip("#")
            tr.fillcolor = f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},0.15)"
        else:
            tr.line.color = c


def _current_marks(fig: go.Figure, compress_result: Mapping[str, Any] | None, x: float | None) -> None:
    if not compress_result or x is None:
        return
    label = compress_result.get("setting_label", "current")
    for arm in compress_result.get("arms", {}).values():
        fig.add_trace(go.Scatter(
            x=[x], y=[100 * arm["compressed_accuracy"]], mode="markers", name=f"now: {arm['label']}",
            legendgroup=f"now-{arm['role']}", showlegend=False,
            marker={"symbol": "star", "size": 16, "color": ROLE_COLORS.get(arm["role"], PALETTE[2]),
                    "line": {"width": 1, "color": "black"}},
            hovertemplate=f"current setting: {label}<br>{arm['label']}: %{{y:.1f}}%<extra></extra>"))


def _progress_note(curves: Mapping[str, Any]) -> str:
    if curves.get("complete", True):
        return ""
    return f"  (computing: {curves['done']}/{curves['total']} points)"


def sparsity_curve_figure(curves: Mapping[str, Any], setting: Setting,
                          compress_result: Mapping[str, Any] | None = None, height: int = CURVE_HEIGHT) -> go.Figure:
    """Accuracy vs sparsity of both arms for the setting's pruning method (magnitude for N:M / none),
    weights in full precision; a dashed line and stars mark the current setting."""
    method = setting.method if setting.method in ("magnitude", "wanda") else "magnitude"
    df: pd.DataFrame = curves["sparsity"]
    df = df[df["method"] == method].assign(**{ACC: lambda d: 100 * d["accuracy"]})
    title = f"Accuracy vs sparsity ({method}, float){_progress_note(curves)}"
    if df.empty:
        return empty_figure("computing the accuracy-vs-sparsity curve…", height)
    x_now = setting.sparsity
    fig = accuracy_curve_figure(df, x="sparsity", y=ACC, group="label", mark=x_now, title=title, height=height)
    _recolor(fig, dict(zip(df["label"], df["role"])))
    _current_marks(fig, compress_result, x_now)
    fig.update_xaxes(range=[-0.02, 1.0], tickformat=".0%")
    fig.update_yaxes(range=[0, 102])
    return fig


def bits_curve_figure(curves: Mapping[str, Any], setting: Setting,
                      compress_result: Mapping[str, Any] | None = None, height: int = CURVE_HEIGHT) -> go.Figure:
    """Accuracy vs bit-width of both arms, no pruning: weights only when activations are float in the
    current setting, weights = activations otherwise; the current bit-width is marked."""
    mode = "W=A" if setting.a_bits is not None else "W-only"
    df: pd.DataFrame = curves["bits"]
    df = df[df["mode"] == mode].assign(**{ACC: lambda d: 100 * d["accuracy"]})
    what = "weight = activation bits" if mode == "W=A" else "weight bits (float activations)"
    title = f"Accuracy vs {what}{_progress_note(curves)}"
    if df.empty:
        return empty_figure("computing the accuracy-vs-bits curve…", height)
    x_now = setting.w_bits if setting.w_bits is not None else setting.a_bits
    fig = accuracy_curve_figure(df, x="bits", y=ACC, group="label", mark=x_now, title=title, height=height)
    _recolor(fig, dict(zip(df["label"], df["role"])))
    _current_marks(fig, compress_result, None if x_now is None else float(min(x_now, 9)))
    fig.update_yaxes(range=[0, 102])
    fig.update_xaxes(dtick=1, title=f"bits (weights per-{setting.granularity})")
    return fig


def _arm_path_traces(arm: Mapping[str, Any]) -> list[Any]:
    """One arm's 1-D slice as traces, drawn by :func:`craftlab.viz.plots.compression_path_figure` (or
    ``line_figure`` with no compression) and restyled for the overlay: the arm's colour and legend group,
    its label (with ΔL) on the measured curve, the prediction and both marks out of the legend."""
    res, role, label = arm["path"], arm["role"], arm["label"]
    color = ROLE_COLORS.get(role, PALETTE[2])
    if isinstance(res, LineResult):
        traces = list(line_figure({label: res}).data)
        traces[0].update(line={"color": color, "width": 2}, legendgroup=role)
        return traces
    loss = np.asarray(res.loss, float)
    jump = res.meta.get("measured_jump")
    name = label + (f": ΔL {loss[res.index_compressed] - loss[res.index_original]:+.3g}" if jump is not None else "")
    traces = list(compression_path_figure(res).data)  # measured, [2nd-order prediction], original, compressed
    measured, *middle, original, compressed = traces
    measured.update(name=name, line={"color": color, "width": 2}, legendgroup=role,
                    hovertemplate="t=%{x:.2f}<br>loss=%{y:.4g}<extra>" + label + "</extra>")
    for pred in middle:
        pred.update(name=f"{label}: 2nd-order prediction", line={"color": color, "width": 1.5, "dash": "dash"},
                    legendgroup=role, showlegend=False, hoverinfo="skip")
    original.update(name=f"{label}: original", legendgroup=role, showlegend=False,
                    marker={"symbol": "circle", "size": 9, "color": color, "line": {"width": 1, "color": "black"}})
    compressed.update(name=f"{label}: compressed", legendgroup=role, showlegend=False,
                      marker={"symbol": "star", "size": 15, "color": color, "line": {"width": 1, "color": "black"}})
    return traces


def path_figure(landscapes: Mapping[str, Mapping[str, Any]], height: int = LANDSCAPE_HEIGHT) -> go.Figure:
    """The 1-D slices of both arms overlaid: the loss along ``w + t (C(w) − w)`` (t = 1 is the compressed
    model, starred) with the dashed 2nd-order prediction, or along a random direction when nothing is compressed.

    Each arm is drawn by :func:`craftlab.viz.plots.compression_path_figure` (one model per figure there);
    what this adds is the overlay of both arms in their role colours and the app's titles."""
    fig = go.Figure()
    for arm in landscapes.values():
        fig.add_traces(_arm_path_traces(arm))
    is_path = any(isinstance(a["path"], PathResult) for a in landscapes.values())
    setting = next(iter(landscapes.values()), {}).get("setting_label", "")
    if is_path:
        title = (f"Loss along the compression direction w + t·(C(w) − w), {setting}: ★ = compressed, "
                 "dashed = 2nd-order prediction")
        xt = "t  (0 = fine-tuned weights, 1 = compressed)"
        fig.add_vline(x=1.0, line={"dash": "dot", "color": "grey", "width": 1})
    else:
        title = "Loss along a random filter-normalized direction (no compression selected)"
        xt = "α"
    fig.add_vline(x=0.0, line={"dash": "dot", "color": "grey", "width": 1})
    return _layout(fig, title, height, xaxis_title=xt, yaxis_title="loss (probe batch)")


def plane_figures(landscapes: Mapping[str, Mapping[str, Any]], kind: str = "contour", log: bool = True,
                  height: int = LANDSCAPE_HEIGHT) -> list[go.Figure]:
    """One 2-D landscape per arm (contour or surface), on a shared colour scale so the arms compare;
    the compressed point (α = 1, β = 0) is starred and the fine-tuned weights crossed."""
    planes: list[tuple[Mapping[str, Any], PlaneResult]] = [(a, a["plane"]) for a in landscapes.values()]
    zs = []
    for _, p in planes:
        z = np.asarray(p.loss, float)
        zs.append(np.log10(np.maximum(z, 1e-12)) if log else z)
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in zs]) if zs else np.array([])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    figs = []
    for arm, p in planes:
        compressed = p.meta.get("kind") == "compression_plane"
        title = f"{arm['label']} · {arm.get('setting_label', '')}"
        fig = plane_figure(p, kind=kind, log=log, title=title, height=height)
        ax = ("α  (along C(w) − w)", "β  (random, same length)") if compressed else ("α  (random)", "β  (random)")
        if kind == "contour":
            fig.update_layout(xaxis_title=ax[0], yaxis_title=ax[1])
        else:
            fig.update_layout(scene={"xaxis_title": ax[0], "yaxis_title": ax[1]})
        if kind == "contour":
            fig.update_traces(selector={"type": "contour"}, zmin=lo, zmax=hi, zauto=False, autocontour=False,
                              contours={"start": lo, "end": hi, "size": (hi - lo) / 20})
        else:
            fig.update_traces(selector={"type": "surface"}, cmin=lo, cmax=hi, cauto=False)
            fig.update_layout(scene={"zaxis": {"range": [lo, hi]}})
        fig.update_layout(title={"font": {"size": 13, "color": ROLE_COLORS.get(arm["role"], "black")}})
        figs.append(fig)
    return figs


def training_figure(state: Mapping[str, Any] | None, height: int = CURVE_HEIGHT) -> go.Figure:
    """Live fine-tuning curves: train loss (solid) and validation loss (dashed) per epoch for each run."""
    runs: Sequence[Mapping[str, Any]] = (state or {}).get("runs", [])
    if not runs or not any(r.get("history") for r in runs):
        return empty_figure("the loss curve appears here after the first epoch", height)
    fig = go.Figure()
    for r in runs:
        color = ROLE_COLORS.get(r.get("role", "plain"), PALETTE[2])
        h = r.get("history") or []
        ep = [x["epoch"] for x in h]
        fig.add_trace(go.Scatter(x=ep, y=[x["train_loss"] for x in h], mode="lines+markers",
                                 name=f"{r['label']}: train loss", line={"color": color, "width": 2}))
        fig.add_trace(go.Scatter(x=ep, y=[x["val_loss"] for x in h], mode="lines+markers",
                                 name=f"{r['label']}: val loss", line={"color": color, "width": 2, "dash": "dash"},
                                 customdata=[[100 * x["val_accuracy"]] for x in h],
                                 hovertemplate="epoch %{x}<br>val loss %{y:.4g}<br>val acc %{customdata[0]:.1f}%"
                                               "<extra></extra>"))
    epochs = max(int(r.get("epochs") or 1) for r in runs)
    fig.update_xaxes(range=[0.5, epochs + 0.5], dtick=1 if epochs <= 20 else None)
    return _layout(fig, "Fine-tuning: loss per epoch", height, xaxis_title="epoch", yaxis_title="cross-entropy")
