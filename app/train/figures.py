"""The Train tab's figure: live loss curves of the runs being trained (plain blue, CrAFT red)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from craftlab.viz.plots import PALETTE

from ..common.figures import CURVE_HEIGHT, ROLE_COLORS, empty_figure, layout

__all__ = ["training_figure"]


def training_figure(state: Mapping[str, Any] | None, height: int = CURVE_HEIGHT,
                    title: str = "Fine-tuning: loss per epoch") -> go.Figure:
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
    return layout(fig, title, height, xaxis_title="epoch", yaxis_title="cross-entropy")
