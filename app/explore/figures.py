"""Plotly figures of :mod:`craftlab_app.explore.service` results: both fine-tuning arms side by side or overlaid.

Every figure has an explicit height (Gradio renders autosized plotly figures at zero height). The
plain arm is blue and the CrAFT (SAM) arm red throughout, in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from craftlab.probes.landscape import LineResult, PathResult, PlaneResult
from craftlab.settings import Setting, bits_label
from craftlab.viz.plots import (
    PALETTE,
    accuracy_curve_figure,
    compression_path_figure,
    line_figure,
    plane_figure,
)

from ..common.figures import CURVE_HEIGHT, ROLE_COLORS, empty_figure, layout, title_lines, wrap_title
from .curves import BITS_X, bits_x

__all__ = ["ROLE_COLORS", "bits_curve_figure", "empty_figure", "path_figure", "plane_figures",
           "sharpness_gap_figure", "sharpness_scatter", "sparsity_curve_figure", "wrap_title"]

LANDSCAPE_HEIGHT = 420
ACC = "test accuracy (%)"


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


def _star(fig: go.Figure, x: float, y: float, role: str, label: str, what: str) -> None:
    fig.add_trace(go.Scatter(
        x=[x], y=[y], mode="markers", name=f"now: {label}", legendgroup=f"now-{role}", showlegend=False,
        marker={"symbol": "star", "size": 17, "color": ROLE_COLORS.get(role, PALETTE[2]),
                "line": {"width": 1, "color": "black"}},
        hovertemplate=f"current setting: {what}<br>{label}: %{{y:.1f}}%<extra></extra>"))


def _stars_on_curve(fig: go.Figure, df: pd.DataFrame, x_col: str, x_now: float, tag: str,
                    answer: Mapping[str, Any] | None) -> None:
    """A star per arm at the current setting, ON its curve: the curve's own (mean) value at ``x_now``; the
    /compress answer (seed 0) while that point is still being computed."""
    for role, part in df.groupby("role", sort=False):
        here = part[np.isclose(part[x_col].astype(float), x_now)]
        if len(here):
            _star(fig, x_now, float(here[ACC].mean()), str(role), str(here["label"].iloc[0]), tag)
    if answer and not (len(df) and np.isclose(df[x_col].astype(float), x_now).any()):
        for arm in answer.get("arms", {}).values():
            _star(fig, x_now, 100 * arm["compressed_accuracy"], arm["role"], arm["label"], tag)


def _progress_note(curves: Mapping[str, Any]) -> str:
    seeds = len(curves.get("seeds", [])) or 1
    band = f"mean ± 1 sd over {seeds} seeds" if seeds > 1 else "seed 0"
    if curves.get("complete", True):
        return band
    return f"{band}; computing {curves['done']}/{curves['total']} points"


def sparsity_curve_figure(curves: Mapping[str, Any], setting: Setting, answer: Mapping[str, Any] | None = None,
                          tag: str = "", height: int = CURVE_HEIGHT) -> go.Figure:
    """Accuracy vs sparsity of both arms for the setting's pruning method, *at the setting's bits*, mean ± 1 sd
    over seeds; a dashed line and the stars (on the curves) mark the current setting. With N:M, the N:M
    patterns are extra points (diamonds) and the star sits on the current pattern."""
    df = curves["sparsity"].assign(**{ACC: lambda d: 100 * d["accuracy"]})
    nm = curves["nm"].assign(**{ACC: lambda d: 100 * d["accuracy"]})
    method = df["method"].iloc[0] if len(df) else (setting.nm_score if setting.method == "N:M" else setting.method)
    q = "float" if not setting.quantizes else bits_label(setting.w_bits, setting.a_bits)
    title = f"Accuracy vs sparsity ({method}, {q})<br><sup>{tag} · {_progress_note(curves)}</sup>"
    if df.empty:
        return empty_figure(f"computing the accuracy-vs-sparsity curve… {tag}", height)
    x_now = float(setting.sparsity)
    fig = accuracy_curve_figure(df, x="sparsity", y=ACC, group="label", mark=x_now, title=title, height=height)
    fig.update_traces(mode="lines", selector={"fill": "toself"})
    _recolor(fig, dict(zip(df["label"], df["role"])))
    if setting.method == "N:M" and len(nm):
        for role, part in nm.groupby("role", sort=False):
            agg = part.groupby(["pattern", "sparsity"], sort=False)[ACC].mean().reset_index()
            fig.add_trace(go.Scatter(x=agg["sparsity"], y=agg[ACC], mode="markers+text", text=agg["pattern"],
                                     textposition="middle right", name=f"{part['label'].iloc[0]}: N:M",
                                     legendgroup=str(part["label"].iloc[0]), showlegend=False,
                                     marker={"symbol": "diamond", "size": 9, "color": ROLE_COLORS.get(str(role))}))
        _stars_on_curve(fig, nm[nm["pattern"] == setting.pattern], "sparsity", x_now, tag, answer)
    else:
        _stars_on_curve(fig, df, "sparsity", x_now, tag, answer)
    fig.update_xaxes(range=[-0.02, 1.0], tickformat=".0%")
    fig.update_yaxes(range=[0, 102])
    return fig


def bits_curve_figure(curves: Mapping[str, Any], setting: Setting, answer: Mapping[str, Any] | None = None,
                      tag: str = "", height: int = CURVE_HEIGHT) -> go.Figure:
    """Accuracy vs weight bits of both arms *at the setting's pruning and activation bits* (2..8, 16, float),
    mean ± 1 sd over seeds; the star (on the curves) marks the current weight bits."""
    df = curves["bits"].assign(**{ACC: lambda d: 100 * d["accuracy"]})
    prune = setting.prune_label() or "no pruning"
    acts = "float activations" if setting.a_bits is None else f"A{setting.a_bits}"
    title = (f"Accuracy vs weight bits ({prune}, {acts})<br><sup>{tag} · {_progress_note(curves)}</sup>")
    if df.empty:
        return empty_figure(f"computing the accuracy-vs-bits curve… {tag}", height)
    x_now = bits_x(setting.w_bits)
    fig = accuracy_curve_figure(df, x="bits", y=ACC, group="label", mark=x_now, title=title, height=height)
    fig.update_traces(mode="lines", selector={"fill": "toself"})
    _recolor(fig, dict(zip(df["label"], df["role"])))
    _stars_on_curve(fig, df, "bits", x_now, tag, answer)
    ticks = sorted(set(df["bits"].astype(float)) | {x_now})
    names = {v: k for k, v in BITS_X.items()}
    fig.update_xaxes(tickvals=ticks, ticktext=[("FP" if names[t] is None else str(names[t])) if t in names
                                               else f"{t:g}" for t in ticks],
                     title=f"weight bits (per-{setting.granularity}; FP = float weights)")
    fig.update_yaxes(range=[0, 102])
    return fig


def _arm_path_traces(arm: Mapping[str, Any]) -> list[Any]:
    """One arm's 1-D slice as traces, drawn by :func:`craftlab.viz.plots.compression_path_figure` (or
    ``line_figure`` with no compression) and restyled for the overlay: the arm's colour and legend group,
    its label with the loss at the original and compressed points on the measured curve, the prediction
    and both marks (with their values printed) out of the legend."""
    res, role, label = arm["path"], arm["role"], arm["label"]
    color = ROLE_COLORS.get(role, PALETTE[2])
    if isinstance(res, LineResult):
        traces = list(line_figure({label: res}).data)
        traces[0].update(line={"color": color, "width": 2}, legendgroup=role)
        return traces
    loss = np.asarray(res.loss, float)
    l0, l1 = loss[res.index_original], loss[res.index_compressed]
    name = f"{label}: loss {l0:.3g} → {l1:.3g} (ΔL {l1 - l0:+.3g})"
    traces = list(compression_path_figure(res).data)  # measured, [2nd-order prediction], original, compressed
    measured, *middle, original, compressed = traces
    measured.update(name=name, line={"color": color, "width": 2}, legendgroup=role,
                    hovertemplate="t=%{x:.2f}<br>loss=%{y:.4g}<extra>" + label + "</extra>")
    for pred in middle:
        pred.update(name=f"{label}: 2nd-order prediction", line={"color": color, "width": 1.5, "dash": "dash"},
                    legendgroup=role, showlegend=False, hoverinfo="skip")
    # the arms' labels at t = 0 and t = 1 on opposite sides, so that they do not overlap
    original.update(textposition="top left" if role == "plain" else "bottom right")
    compressed.update(textposition="top left" if role == "plain" else "bottom right")
    original.update(name=f"{label}: original", legendgroup=role, showlegend=False, textfont={"color": color},
                    marker={"symbol": "circle", "size": 9, "color": color, "line": {"width": 1, "color": "black"}})
    compressed.update(name=f"{label}: compressed", legendgroup=role, showlegend=False, textfont={"color": color},
                      marker={"symbol": "star", "size": 15, "color": color, "line": {"width": 1, "color": "black"}})
    return traces


def _resolution_note(landscapes: Mapping[str, Mapping[str, Any]]) -> str:
    res = next(iter(landscapes.values()), {}).get("resolution") or {}
    if not res:
        return ""
    n = res["plane_steps"]
    return (f"{n}×{n} plane, {res['path_steps']}-point path" +
            ("" if res.get("final", True) else " — a finer grid follows in a few seconds"))


def activation_gaps(landscapes: Mapping[str, Mapping[str, Any]], rtol: float = 1e-6) -> dict[str, float]:
    """{arm label: the original model's loss} for the arms whose slice does not start at it (t = 0 differs from
    the uncompressed model: activation quantization, which no weight move undoes); empty when every slice's
    t = 0 is the original model."""
    out = {}
    for arm in landscapes.values():
        res = arm["path"]
        orig = res.meta.get("loss_original") if isinstance(res, PathResult) else None
        if orig is not None and abs(float(res.loss[res.index_original]) - orig) > rtol * max(1.0, abs(orig)):
            out[arm["label"]] = float(orig)
    return out


def path_figure(landscapes: Mapping[str, Mapping[str, Any]], height: int = LANDSCAPE_HEIGHT,
                tag: str = "") -> go.Figure:
    """The 1-D slices of both arms overlaid: the loss along ``w + t (C(w) − w)`` (t = 1 is the compressed
    model, starred) with the dashed 2nd-order prediction, or along a random direction when nothing is compressed.
    The loss at the original and compressed points is printed beside each mark and in the legend.

    Each arm is drawn by :func:`craftlab.viz.plots.compression_path_figure` (one model per figure there);
    what this adds is the overlay of both arms in their role colours and the app's titles (with `tag`)."""
    fig = go.Figure()
    for arm in landscapes.values():
        fig.add_traces(_arm_path_traces(arm))
    is_path = any(isinstance(a["path"], PathResult) for a in landscapes.values())
    setting = next(iter(landscapes.values()), {}).get("setting_label", "")
    tag = tag or f"[{setting}]"
    note = _resolution_note(landscapes)
    gaps = activation_gaps(landscapes)
    if is_path:
        title = (f"Loss along the compression direction w + t·(C(w) − w) {tag}<br><sup>★ = compressed (t = 1), "
                 f"● = fine-tuned (t = 0), dashed = 2nd-order prediction; {note}</sup>")
        if gaps:  # activation quantization is not a weight change: t = 0 is not the float model, and says so
            title += ("<br><sup>Activations are quantized along the whole slice (they are not weights: no weight-"
                      "space path reaches the float model), so t = 0 is the fine-tuned weights with quantized "
                      "activations; ○ = the original float model.</sup>")
            for arm in landscapes.values():
                if arm["label"] in gaps:
                    fig.add_trace(go.Scatter(
                        x=[0.0], y=[gaps[arm["label"]]], mode="markers+text", showlegend=False,
                        name=f"{arm['label']}: original (float activations)", legendgroup=arm["role"],
                        text=[f"{gaps[arm['label']]:.3g}"], textposition="middle left",
                        marker={"symbol": "circle-open", "size": 11,
                                "color": ROLE_COLORS.get(arm["role"], PALETTE[2]), "line": {"width": 2}}))
        xt = "t  (0 = fine-tuned weights, 1 = compressed)"
        fig.add_vline(x=1.0, line={"dash": "dot", "color": "grey", "width": 1})
    else:
        title = f"Loss along a random filter-normalized direction (no compression selected) {tag}<br><sup>{note}</sup>"
        xt = "α"
    fig.add_vline(x=0.0, line={"dash": "dot", "color": "grey", "width": 1})
    return layout(fig, title, height, xaxis_title=xt, yaxis_title="loss (probe batch)")


def plane_figures(landscapes: Mapping[str, Mapping[str, Any]], kind: str = "contour", log: bool = True,
                  height: int = LANDSCAPE_HEIGHT, tag: str = "") -> list[go.Figure]:
    """One 2-D landscape per arm (contour or surface), log10 or linear loss, on a shared colour scale (and,
    as surfaces, one camera) so the arms compare; the compressed point (α = 1, β = 0) is starred and the
    fine-tuned weights crossed, each labelled with its loss."""
    if kind not in ("contour", "surface"):
        raise ValueError(f"kind must be 'contour' or 'surface', got {kind!r}")
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
        title = f"{arm['label']} {tag or '[' + arm.get('setting_label', '') + ']'}"
        fig = plane_figure(p, kind=kind, log=log, title=title, height=height)
        ax = ("α  (along C(w) − w)", "β  (random, same length)") if compressed else ("α  (random)", "β  (random)")
        if kind == "contour":
            fig.update_layout(xaxis_title=ax[0], yaxis_title=ax[1])
            fig.update_traces(selector={"type": "contour"}, zmin=lo, zmax=hi, zauto=False, autocontour=False,
                              contours={"start": lo, "end": hi, "size": (hi - lo) / 20},
                              line_smoothing=0.85 if len(p.betas) <= 7 else 0.0)  # a coarse grid, smoothed
        else:
            fig.update_layout(scene={"xaxis_title": "α (toward C(w))" if compressed else "α", "yaxis_title": "β",
                                     "zaxis": {"range": [lo, hi]}})
            fig.update_traces(selector={"type": "surface"}, cmin=lo, cmax=hi, cauto=False)
        fig.update_layout(title={"font": {"size": 13, "color": ROLE_COLORS.get(arm["role"], "black")}})
        figs.append(fig)
    return figs


# ----------------------------------------------------------------------------------------------------- sharpness

SHARP_HEIGHT = 340


def sharpness_gap_figure(table: pd.DataFrame, tag: str, measures: Mapping[str, str],
                         height: int = SHARP_HEIGHT) -> go.Figure:
    """CrAFT − plain for each sharpness measure, relative to the plain arm (%, mean over the seeds measured):
    below zero, CrAFT sits in the flatter minimum. `table`: :meth:`Explorer.sharpness_table` rows."""
    roles = set(table["role"]) if len(table) else set()
    if not {"plain", "craft"} <= roles:
        return empty_figure(f"{tag} the sharpness gap needs both arms measured (in progress…)", height)
    means = table.groupby("role")[list(measures)].mean()
    n = table.groupby("role")["seed"].nunique().min()
    labels = table.drop_duplicates("role").set_index("role")["label"]
    rel = [100 * (means.at["craft", m] - means.at["plain", m]) / abs(means.at["plain", m]) for m in measures]
    fig = go.Figure(go.Bar(
        x=list(measures.values()), y=rel, marker_color=[ROLE_COLORS["craft"] if r < 0 else "grey" for r in rel],
        text=[f"{r:+.0f}%" for r in rel], textposition="outside",
        customdata=[[means.at["plain", m], means.at["craft", m]] for m in measures],
        hovertemplate=f"%{{x}}<br>{labels['plain']}: %{{customdata[0]:.4g}}<br>CrAFT ({labels['craft']}): "
                      "%{customdata[1]:.4g}<extra></extra>"))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    span = max(10.0, *(abs(r) for r in rel)) * 1.25
    fig.update_yaxes(range=[-span, span], ticksuffix="%")
    seeds = f"mean of {n} seeds" if n > 1 else "seed 0"
    return layout(fig, f"Sharpness gap: CrAFT − {labels['plain']}, relative to {labels['plain']} {tag}<br><sup>"
                        f"smaller = flatter: below 0, CrAFT's minimum is flatter by that measure ({seeds})</sup>",
                   height, yaxis_title=f"(CrAFT − {labels['plain']}) / {labels['plain']}")


def sharpness_scatter(table: pd.DataFrame, measure: str, measure_label: str, tag: str,
                      height: int = SHARP_HEIGHT) -> go.Figure:
    """Accuracy drop at the view's setting against one sharpness measure, one point per arm and seed, with the
    least-squares line and Spearman ρ (:func:`craftlab.viz.experiment_figures.scatter_figure`, as in notebook 02)."""
    from craftlab.viz.experiment_figures import scatter_figure

    if len(table) < 2:
        return empty_figure(f"{tag} the scatter needs the sharpness and accuracy drop of two arms "
                            "(in progress…)", height)
    df = table.assign(accuracy_drop_pts=100 * table["accuracy_drop"], seed=table["seed"].map(lambda s: f"seed {s}"))
    fig = scatter_figure(df, x=measure, y="accuracy_drop_pts", color="label", label="seed", height=height,
                         title=f"Accuracy drop vs {measure_label} {tag}")
    colors = {lab: ROLE_COLORS.get(role, PALETTE[2]) for lab, role in zip(df["label"], df["role"])}
    for tr in fig.data:
        if tr.name in colors:
            tr.marker.color = colors[tr.name]
    if len(df) < 3:  # a line through two points says nothing: no fit drawn
        fig.data = tuple(t for t in fig.data if "lines" not in (t.mode or ""))
    title = wrap_title(str(fig.layout.title.text or ""), 60)
    fig.update_layout(xaxis_title=f"{measure_label} at the fine-tuned weights (smaller = flatter)",
                      yaxis_title="accuracy drop (pts)", title={"text": title, "font": {"size": 13}},
                      margin={"t": 30 + 20 * title_lines(title)})
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig
