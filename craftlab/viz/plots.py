"""Plotly figures for landscapes, compression paths and flatness-vs-compressibility studies.

Every figure has an explicit ``height`` (Gradio renders autosized plotly figures at zero height) and the
``plotly_white`` template by default, which reads well both in JupyterLab and in Gradio's light and dark
themes (the plot keeps its own white background). Width is left to the container.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..analysis.stats import rankdata, spearman  # noqa: F401  (re-exported: plots.spearman)
from ..probes.landscape import LineResult, PathResult, PlaneResult

TEMPLATE = "plotly_white"
HEIGHT = 420
PALETTE = qualitative.Plotly

__all__ = [
    "HEIGHT",
    "TEMPLATE",
    "accuracy_curve_figure",
    "compression_path_figure",
    "line_figure",
    "plane_figure",
    "rankdata",
    "sharpness_scatter_figure",
    "spearman",
]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[k:k + 2], 16) for k in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _finish(fig: go.Figure, title: str | None, height: int, template: str, **layout: Any) -> go.Figure:
    if not (isinstance(height, (int, float)) and height > 0):
        raise ValueError(f"height must be a positive number of pixels, got {height!r}")
    fig.update_layout(title=title, height=int(height), template=template, autosize=True,
                      margin={"l": 60, "r": 20, "t": 60 if title else 30, "b": 50},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
                      **layout)
    return fig


def _metric_values(result: Any, metric: str) -> np.ndarray:
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    return np.asarray(getattr(result, metric), dtype=float)


# --------------------------------------------------------------------------------------------- landscapes

def line_figure(results: Mapping[str, LineResult] | LineResult, metric: str = "loss", title: str | None = None,
                height: int = HEIGHT, template: str = TEMPLATE, x_title: str | None = None) -> go.Figure:
    """Overlay 1-D slices of several models (e.g. ``{"AdamW": r1, "SAM": r2}``): one trace per label.

    x is alpha (or t for interpolations), y the loss or accuracy (`metric`); a dotted line marks x = 0.
    """
    if isinstance(results, LineResult):
        results = {"model": results}
    if not results:
        raise ValueError("results is empty: pass {label: LineResult}")
    fig = go.Figure()
    for k, (label, res) in enumerate(results.items()):
        fig.add_trace(go.Scatter(x=np.asarray(res.alphas, float), y=_metric_values(res, metric), mode="lines",
                                 name=str(label), line={"color": _color(k), "width": 2},
                                 hovertemplate="α=%{x:.3g}<br>" + metric + "=%{y:.4g}<extra>%{fullData.name}</extra>"))
    first = next(iter(results.values()))
    if x_title is None:
        if first.meta.get("kind") == "interpolation":
            x_title = "t  ((1 − t)·a + t·b)"
        else:
            norm = first.meta.get("normalization")
            x_title = "α" + (f"  ({norm}-normalized direction)" if norm else "")
    fig.add_vline(x=0.0, line={"dash": "dot", "color": "grey", "width": 1})
    return _finish(fig, title, height, template, xaxis_title=x_title, yaxis_title=metric)


def _marks(result: PlaneResult, mark: Any) -> list[dict[str, Any]]:
    """Normalise `mark` to a list of {"alpha", "beta", "label"}; None -> result.meta["mark"] (if any)."""
    if mark is None:
        mark = result.meta.get("mark")
    if mark is None or mark is False:
        return []
    if isinstance(mark, Mapping):
        mark = [mark]
    elif isinstance(mark, Sequence) and len(mark) == 2 and all(isinstance(v, (int, float)) for v in mark):
        mark = [{"alpha": mark[0], "beta": mark[1]}]
    out = []
    for m in mark:
        if isinstance(m, Mapping):
            out.append({"alpha": float(m["alpha"]), "beta": float(m["beta"]), "label": str(m.get("label", "mark"))})
        else:
            out.append({"alpha": float(m[0]), "beta": float(m[1]), "label": str(m[2]) if len(m) > 2 else "mark"})
    return out


def _value_at(result: PlaneResult, z: np.ndarray, alpha: float, beta: float) -> float:
    """z (rows alpha, cols beta) at (alpha, beta): exact grid value, else bilinear interpolation."""
    a, b = np.asarray(result.alphas, float), np.asarray(result.betas, float)
    rows = np.array([np.interp(beta, b, z[i]) for i in range(len(a))])
    return float(np.interp(alpha, a, rows))


def _fmt(v: float) -> str:
    """A value for a label: 3 significant digits, no exponent for ordinary magnitudes."""
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.2e}"


LABEL_BOX = {"bgcolor": "rgba(255,255,255,0.88)", "bordercolor": "#444", "borderwidth": 1, "borderpad": 3,
             "font": {"size": 12, "color": "#111"}}
"""Marker labels on landscapes: dark text on a white box, readable on any colour of the map."""
SURFACE_CAMERA = {"eye": {"x": 1.3, "y": -1.3, "z": 0.85}, "up": {"x": 0, "y": 0, "z": 1}}
"""The one camera of every surface figure, so two arms drawn side by side are seen from the same point."""


def plane_figure(result: PlaneResult, kind: str = "contour", mark: Any = None, metric: str = "loss",
                 log: bool = False, title: str | None = None, height: int = 520, template: str = TEMPLATE,
                 levels: int = 25, label_values: bool = True) -> go.Figure:
    """A 2-D slice as a contour map or a 3-D surface; alpha (first direction) on x, beta on y.

    Args:
        kind: ``"contour"`` or ``"surface"``.
        mark: a point to mark: ``(alpha, beta)``, ``{"alpha", "beta", "label"}`` or a list of them; ``None``
            uses ``result.meta["mark"]`` (set by ``compression_plane``), ``False`` marks nothing. The
            origin (the model itself) is always marked.
        log: plot log10 of the metric (useful when the loss spans decades); False: the metric itself.
        label_values: label each mark with the metric's value there (``compressed · loss 0.412``), in a
            white box that reads on any colour of the map.
    Traces: the contour/surface, one for the origin, one per mark. Surfaces share one camera
    (:data:`SURFACE_CAMERA`) and keep their axis titles inside the figure.
    """
    if kind not in ("contour", "surface"):
        raise ValueError(f"kind must be 'contour' or 'surface', got {kind!r}")
    raw = _metric_values(result, metric)
    z = np.log10(np.maximum(raw, 1e-12)) if log else raw
    zname = f"log10 {metric}" if log else metric
    a, b = np.asarray(result.alphas, float), np.asarray(result.betas, float)
    marks = [{"alpha": 0.0, "beta": 0.0, "label": str(result.meta.get("origin", {}).get("label", "model"))}]
    marks += _marks(result, mark)
    texts = [m["label"] + (f" · {metric} {_fmt(_value_at(result, raw, m['alpha'], m['beta']))}" if label_values
                           else "") for m in marks]
    fig = go.Figure()
    if kind == "contour":
        fig.add_trace(go.Contour(x=a, y=b, z=z.T, colorscale="Viridis", ncontours=levels,
                                 colorbar={"title": {"text": zname}}, name=zname,
                                 hovertemplate="α=%{x:.3g}<br>β=%{y:.3g}<br>" + zname + "=%{z:.4g}<extra></extra>"))
        for k, (m, text) in enumerate(zip(marks, texts)):
            fig.add_trace(go.Scatter(x=[m["alpha"]], y=[m["beta"]], mode="markers", name=m["label"],
                                     hovertemplate=text + "<extra></extra>",
                                     marker={"symbol": "x" if k == 0 else "star", "size": 12 if k == 0 else 16,
                                             "color": "white" if k == 0 else "red",
                                             "line": {"width": 1, "color": "black"}}))
            fig.add_annotation(x=m["alpha"], y=m["beta"], text=text, showarrow=True, arrowhead=0, arrowcolor="#444",
                               ax=-30 if k == 0 else 30, ay=-28 if k == 0 else 28, **LABEL_BOX)
        return _finish(fig, title, height, template, xaxis_title="α", yaxis_title="β")
    fig.add_trace(go.Surface(x=a, y=b, z=z.T, colorscale="Viridis", name=zname,
                             colorbar={"title": {"text": zname}, "len": 0.75, "thickness": 14},
                             hovertemplate="α=%{x:.3g}<br>β=%{y:.3g}<br>" + zname + "=%{z:.4g}<extra></extra>"))
    notes = []
    for k, (m, text) in enumerate(zip(marks, texts)):
        zv = _value_at(result, z, m["alpha"], m["beta"])
        fig.add_trace(go.Scatter3d(x=[m["alpha"]], y=[m["beta"]], z=[zv], mode="markers", name=m["label"],
                                   hovertemplate=text + "<extra></extra>",
                                   marker={"size": 5 if k == 0 else 7, "color": "white" if k == 0 else "red",
                                           "line": {"width": 1, "color": "black"}}))
        notes.append({"x": m["alpha"], "y": m["beta"], "z": zv, "text": text, "showarrow": True, "arrowhead": 0,
                      "ax": -40 if k == 0 else 40, "ay": -30, **LABEL_BOX})
    fig = _finish(fig, title, height, template,
                  scene={"xaxis_title": "α", "yaxis_title": "β", "zaxis_title": zname, "annotations": notes,
                         "camera": SURFACE_CAMERA, "aspectmode": "manual",
                         "aspectratio": {"x": 1, "y": 1, "z": 0.7}, "domain": {"x": [0, 0.9], "y": [0, 1]}})
    fig.update_layout(margin={"l": 10, "r": 10, "b": 10})
    return fig


def compression_path_figure(result: PathResult | Mapping[str, PathResult], metric: str = "loss",
                            title: str | None = None, height: int = HEIGHT, template: str = TEMPLATE) -> go.Figure:
    """Loss along ``w + t (C(w) − w)``: measured (solid), 2nd-order prediction (dashed, loss only), the
    original (t = 0) and the compressed point (t = 1) marked with their values — THE compression-path figure.

    `result` is one :class:`PathResult` or a mapping label -> PathResult (e.g. one per fine-tuning arm),
    drawn in one colour each. Traces per path: measured, [prediction when available], original, compressed.
    """
    paths = {"": result} if isinstance(result, PathResult) else dict(result)
    fig = go.Figure()
    for k, (label, res) in enumerate(paths.items()):
        t, y = np.asarray(res.t, float), _metric_values(res, metric)
        name = f"{label}: " if label else ""
        color = _color(k)
        fig.add_trace(go.Scatter(x=t, y=y, mode="lines", name=f"{name}measured {metric}",
                                 line={"color": color, "width": 2}))
        pred = np.asarray(res.predicted, float)
        if metric == "loss" and np.isfinite(pred).any():
            fig.add_trace(go.Scatter(x=t, y=pred, mode="lines", name=f"{name}2nd-order prediction",
                                     line={"color": _color(1) if not label else color, "dash": "dash", "width": 2}))
        i0, i1 = res.index_original, res.index_compressed
        fig.add_trace(go.Scatter(x=[t[i0]], y=[y[i0]], mode="markers+text", name=f"{name}original (t = 0)",
                                 showlegend=not label, text=[_fmt(y[i0])], textposition="middle left",
                                 textfont={"color": "#111", "size": 12},
                                 marker={"size": 11, "color": "black", "symbol": "circle"}))
        fig.add_trace(go.Scatter(x=[t[i1]], y=[y[i1]], mode="markers+text", name=f"{name}compressed (t = 1)",
                                 showlegend=not label, text=[_fmt(y[i1])], textposition="middle right",
                                 textfont={"color": "#111", "size": 12},
                                 marker={"size": 14, "color": "red" if not label else color, "symbol": "star",
                                         "line": {"width": 1, "color": "black"}}))
    only = next(iter(paths.values()))
    if title is None and len(paths) == 1 and metric == "loss" and "measured_jump" in only.meta:
        title = f"compression path: ΔL measured {only.meta['measured_jump']:.4g}"
        if "predicted_jump" in only.meta:
            title += f", 2nd-order {only.meta['predicted_jump']:.4g}"
    return _finish(fig, title, height, template, xaxis_title="t  (w + t·(C(w) − w))", yaxis_title=metric)


# --------------------------------------------------------------------------------------------- sweeps

def _frame(df: Any, cols: Sequence[str]) -> Any:
    import pandas as pd

    df = pd.DataFrame(df)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the data; have {list(df.columns)}")
    return df


def accuracy_curve_figure(df: Any, x: str = "sparsity", y: str = "accuracy", group: str | None = "arm",
                          seed_col: str | None = "seed", mark: float | Sequence[float] | None = None,
                          title: str | None = None, height: int = HEIGHT, template: str = TEMPLATE,
                          reverse_x: bool | None = None) -> go.Figure:
    """Accuracy vs compression level per arm: mean over seeds (line) and a ±1 std band (sample std, 0 for one seed).

    Args:
        df: a pandas DataFrame (or anything ``pd.DataFrame`` accepts) with columns `x`, `y`, `group`, `seed_col`.
        group: column naming the arm (e.g. "AdamW", "SAM ρ=0.05"); ``None`` or absent treats all rows as one arm.
        seed_col: column of seeds (only counted, for the hover); rows sharing (group, x) are aggregated.
        mark: x value(s) to mark with a dashed vertical line (e.g. 0.5 sparsity).
        reverse_x: reverse the x axis (default: True when ``x == "bits"``, so compression grows to the right).
    Traces: two per arm, band then mean line.
    """
    df = _frame(df, [x, y])
    if group is None or group not in df.columns:
        df = df.assign(_arm=y)
        group = "_arm"
    fig = go.Figure()
    for k, (arm, sub) in enumerate(df.groupby(group, sort=False)):
        agg = sub.groupby(x)[y].agg(["mean", "std", "count"]).sort_index()
        xs = agg.index.to_numpy(dtype=float)
        mean = agg["mean"].to_numpy(float)
        std = np.nan_to_num(agg["std"].to_numpy(float))
        n_seeds = (sub.groupby(x)[seed_col].nunique().reindex(agg.index).to_numpy()
                   if seed_col and seed_col in sub.columns else agg["count"].to_numpy())
        color = _color(k)
        fig.add_trace(go.Scatter(x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([mean + std, (mean - std)[::-1]]),
                                 mode="lines", fill="toself", fillcolor=_rgba(color, 0.2), line={"width": 0},
                                 hoverinfo="skip",
                                 name=f"{arm} ±1 std", legendgroup=str(arm), showlegend=False))
        fig.add_trace(go.Scatter(x=xs, y=mean, mode="lines+markers", name=str(arm), legendgroup=str(arm),
                                 line={"color": color, "width": 2}, customdata=np.stack([std, n_seeds], axis=1),
                                 hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y:.4g}} ± %{{customdata[0]:.3g}}"
                                               "<br>seeds=%{customdata[1]}<extra>%{fullData.name}</extra>"))
    for v in ([] if mark is None else np.atleast_1d(mark)):
        fig.add_vline(x=float(v), line={"dash": "dash", "color": "grey", "width": 1})
    if reverse_x is None:
        reverse_x = x == "bits"
    _finish(fig, title, height, template, xaxis_title=x, yaxis_title=y)
    if reverse_x:
        fig.update_xaxes(autorange="reversed")
    return fig


def sharpness_scatter_figure(df: Any, x: str = "lambda_max", y: str = "accuracy_drop", label: str | None = None,
                             color: str | None = None, fit: bool = True, log_x: bool = False,
                             title: str | None = None, height: int = HEIGHT, template: str = TEMPLATE) -> go.Figure:
    """Flatness vs compressibility: one point per model, a least-squares trend line and Spearman ρ in the title.

    Args:
        label: column shown as hover/text label of each point (e.g. the run name).
        color: column to colour by: numeric (e.g. SAM ρ) -> a continuous colour scale in one trace;
            otherwise one trace per category.
        fit: add the least-squares line ``y = a + b x`` (``x`` = log10 x when `log_x`).
    Traces: the point trace(s), then the fit line.
    """
    import pandas as pd

    cols = [x, y] + [c for c in (label, color) if c]
    df = _frame(df, cols)
    df = df[np.isfinite(df[x].astype(float)) & np.isfinite(df[y].astype(float))]
    rho = spearman(df[x], df[y])
    fig = go.Figure()
    text = df[label].astype(str).to_numpy() if label else None
    hover = f"{x}=%{{x:.4g}}<br>{y}=%{{y:.4g}}" + ("<br>%{text}" if label else "")
    if color and pd.api.types.is_numeric_dtype(df[color]):
        fig.add_trace(go.Scatter(x=df[x], y=df[y], mode="markers", name="models", text=text,
                                 marker={"size": 11, "color": df[color], "colorscale": "Viridis", "showscale": True,
                                         "colorbar": {"title": {"text": color}},
                                         "line": {"width": 1, "color": "black"}},
                                 hovertemplate=hover + f"<br>{color}=%{{marker.color}}<extra></extra>"))
    elif color:
        for k, (cat, sub) in enumerate(df.groupby(color, sort=False)):
            fig.add_trace(go.Scatter(x=sub[x], y=sub[y], mode="markers", name=str(cat),
                                     text=sub[label].astype(str).to_numpy() if label else None,
                                     marker={"size": 11, "color": _color(k), "line": {"width": 1, "color": "black"}},
                                     hovertemplate=hover + "<extra>%{fullData.name}</extra>"))
    else:
        fig.add_trace(go.Scatter(x=df[x], y=df[y], mode="markers", name="models", text=text,
                                 marker={"size": 11, "color": _color(0), "line": {"width": 1, "color": "black"}},
                                 hovertemplate=hover + "<extra></extra>"))
    xv, yv = df[x].to_numpy(float), df[y].to_numpy(float)
    if fit and len(xv) >= 2 and np.ptp(xv) > 0:
        u = np.log10(xv) if log_x else xv
        slope, intercept = np.polyfit(u, yv, 1)
        ug = np.linspace(u.min(), u.max(), 50)
        fig.add_trace(go.Scatter(x=10 ** ug if log_x else ug, y=intercept + slope * ug, mode="lines",
                                 name=f"least-squares fit (slope {slope:.3g})",
                                 line={"color": "grey", "dash": "dash", "width": 2}, hoverinfo="skip"))
    rho_text = f"Spearman ρ = {rho:.2f}" if np.isfinite(rho) else "Spearman ρ = n/a"
    full_title = f"{title} — {rho_text} (n = {len(xv)})" if title else f"{y} vs {x}: {rho_text} (n = {len(xv)})"
    _finish(fig, full_title, height, template, xaxis_title=x, yaxis_title=y)
    if log_x:
        fig.update_xaxes(type="log")
    return fig
