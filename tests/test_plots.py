"""Tests for craftlab.plots: figures build, have the right traces, an explicit height and correct markers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from craftlab import plots as P
from craftlab.probes.landscape import LineResult, PathResult, PlaneResult


def line_result(scale: float = 1.0, kind: str = "line") -> LineResult:
    a = np.linspace(-1, 1, 11)
    return LineResult(a, scale * a ** 2 + 0.1, 1 - 0.1 * a ** 2, {"kind": kind, "normalization": "filter"})


def plane_result(mark: dict | None = None) -> PlaneResult:
    a = np.linspace(-2, 2, 9)
    b = np.linspace(-1, 1, 5)
    loss = a[:, None] ** 2 + 3 * b[None, :] ** 2 + 0.5
    meta = {"mark": mark} if mark else {}
    return PlaneResult(a, b, loss, 1 - loss / loss.max(), meta)


def path_result(with_prediction: bool = True) -> PathResult:
    t = np.linspace(-0.5, 1.5, 9)
    loss = 0.2 + 0.3 * t ** 2 + 0.05 * t ** 3
    pred = 0.2 + 0.3 * t ** 2 if with_prediction else np.full_like(t, np.nan)
    return PathResult(t, loss, 1 - loss, pred, 2, 6, {"measured_jump": 0.35, "predicted_jump": 0.3})


def check_common(fig: go.Figure) -> None:
    assert isinstance(fig, go.Figure)
    assert isinstance(fig.layout.height, int) and fig.layout.height > 0
    assert fig.layout.template is not None
    json.loads(fig.to_json())  # serialisable (what Gradio sends to the browser)


def test_line_figure_overlays_models() -> None:
    fig = P.line_figure({"AdamW": line_result(2.0), "SAM": line_result(0.5)})
    check_common(fig)
    assert [t.name for t in fig.data] == ["AdamW", "SAM"]
    np.testing.assert_allclose(fig.data[1].y, line_result(0.5).loss)
    assert fig.layout.shapes[0].x0 == 0.0  # the model itself
    acc = P.line_figure(line_result(kind="interpolation"), metric="accuracy", height=300)
    assert len(acc.data) == 1 and acc.layout.height == 300 and acc.layout.xaxis.title.text.startswith("t")
    np.testing.assert_allclose(acc.data[0].y, line_result().accuracy)
    with pytest.raises(ValueError):
        P.line_figure({})


@pytest.mark.parametrize("kind", ["contour", "surface"])
def test_plane_figure_marks(kind: str) -> None:
    res = plane_result(mark={"alpha": 1.0, "beta": 0.0, "label": "compressed"})
    fig = P.plane_figure(res, kind=kind)
    check_common(fig)
    assert len(fig.data) == 3  # surface/contour + origin + compressed point
    main = fig.data[0]
    assert main.type == kind
    # alpha on x, beta on y, z transposed so that z[j][i] = loss[i, j]
    np.testing.assert_allclose(np.asarray(main.z), res.loss.T)
    mark = fig.data[2]
    assert mark.name == "compressed" and list(mark.x) == [1.0] and list(mark.y) == [0.0]
    assert list(fig.data[1].x) == [0.0] and list(fig.data[1].y) == [0.0]
    if kind == "surface":
        i, j = list(res.alphas).index(1.0), list(res.betas).index(0.0)
        assert mark.z[0] == pytest.approx(res.loss[i, j])


def test_plane_figure_mark_argument_overrides_meta() -> None:
    res = plane_result(mark={"alpha": 1.0, "beta": 0.0, "label": "compressed"})
    fig = P.plane_figure(res, mark=(0.5, -0.5), log=True)
    assert len(fig.data) == 3 and list(fig.data[2].x) == [0.5] and list(fig.data[2].y) == [-0.5]
    np.testing.assert_allclose(np.asarray(fig.data[0].z), np.log10(res.loss.T))
    assert len(P.plane_figure(res, mark=False).data) == 2
    # off the grid (beta = 0.25 lies between 0 and 0.5) a surface marker sits on the bilinear interpolant
    surf = P.plane_figure(plane_result(), kind="surface", mark=[(0.5, 0.25, "p")])
    assert surf.data[2].z[0] == pytest.approx(0.5 ** 2 + 0.5 + 3 * (0.0 + 0.5 ** 2) / 2)
    with pytest.raises(ValueError):
        P.plane_figure(res, kind="heatmap")


def test_compression_path_figure() -> None:
    res = path_result()
    fig = P.compression_path_figure(res)
    check_common(fig)
    assert len(fig.data) == 4
    measured, pred, orig, comp = fig.data
    np.testing.assert_allclose(measured.y, res.loss)
    assert pred.line.dash == "dash"
    np.testing.assert_allclose(pred.y, res.predicted)
    assert list(comp.x) == [1.0] and comp.y[0] == pytest.approx(res.loss[6])
    assert list(orig.x) == [0.0] and orig.y[0] == pytest.approx(res.loss[2])
    assert "0.35" in fig.layout.title.text
    no_pred = P.compression_path_figure(path_result(with_prediction=False))
    assert len(no_pred.data) == 3
    acc = P.compression_path_figure(res, metric="accuracy")
    assert len(acc.data) == 3 and acc.data[2].y[0] == pytest.approx(res.accuracy[6])


def sweep_frame() -> pd.DataFrame:
    rows = []
    for arm, slope in (("AdamW", 0.8), ("SAM", 0.4)):
        for seed in range(3):
            for s in (0.0, 0.25, 0.5, 0.75):
                rows.append({"arm": arm, "seed": seed, "sparsity": s, "bits": 8 - 2 * int(4 * s),
                             "accuracy": 0.95 - slope * s ** 2 + 0.01 * seed})
    return pd.DataFrame(rows)


def test_accuracy_curve_figure_mean_and_band() -> None:
    df = sweep_frame()
    fig = P.accuracy_curve_figure(df, x="sparsity", mark=0.5)
    check_common(fig)
    assert len(fig.data) == 4  # band + mean per arm
    band, mean = fig.data[0], fig.data[1]
    assert mean.name == "AdamW" and band.fill == "toself"
    sub = df[df.arm == "AdamW"].groupby("sparsity")["accuracy"]
    np.testing.assert_allclose(mean.y, sub.mean().to_numpy())
    np.testing.assert_allclose(band.y[:4], (sub.mean() + sub.std()).to_numpy())
    np.testing.assert_allclose(band.y[4:], (sub.mean() - sub.std()).to_numpy()[::-1])
    assert fig.layout.shapes[0].x0 == 0.5
    bits = P.accuracy_curve_figure(df, x="bits", group=None)
    assert len(bits.data) == 2 and bits.layout.xaxis.autorange == "reversed"
    with pytest.raises(ValueError, match="not in the data"):
        P.accuracy_curve_figure(df, x="nope")


def test_spearman_with_ties() -> None:
    np.testing.assert_array_equal(P.rankdata([3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5])
    assert P.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5.0))
    assert P.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert P.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(P.spearman([1, 2], [1, 2]))


@pytest.mark.parametrize("color", [None, "rho", "arm"])
def test_sharpness_scatter_figure(color: str | None) -> None:
    df = pd.DataFrame({"lambda_max": [10.0, 20.0, 40.0, 80.0, 160.0], "accuracy_drop": [0.01, 0.03, 0.02, 0.08, 0.2],
                       "rho": [0.2, 0.1, 0.05, 0.02, 0.0], "arm": ["SAM", "SAM", "SAM", "AdamW", "AdamW"],
                       "run": list("abcde")})
    fig = P.sharpness_scatter_figure(df, label="run", color=color, log_x=True)
    check_common(fig)
    n_point_traces = 2 if color == "arm" else 1
    assert len(fig.data) == n_point_traces + 1
    assert "Spearman ρ = 0.90" in fig.layout.title.text  # ranks (1,2,3,4,5) vs (1,3,2,4,5)
    fit = fig.data[-1]
    assert fit.line.dash == "dash"
    slope, intercept = np.polyfit(np.log10(df.lambda_max), df.accuracy_drop, 1)
    assert fit.y[0] == pytest.approx(intercept + slope * 1.0)
    assert fig.layout.xaxis.type == "log"
    assert len(P.sharpness_scatter_figure(df, fit=False).data) == 1
