"""Export of a view: its numbers as JSON and its words and figures as one HTML page (plotly.js embedded: opens
offline): the summary, both accuracy cards, the over-seeds verdict, the guide of a preset, the curves, the
sharpness plots (when measured) and the landscapes, the markdown rendered as HTML.

Each figure also has plotly's own camera button (PNG) in the page; the HTML keeps every figure interactive.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from . import figures as figs
from . import panels
from .session import View

__all__ = ["export_view", "view_json"]


def _frame_rows(df: Any) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records"))


def view_json(ex: Any, view: View) -> dict[str, Any]:
    """Everything the view shows, as plain JSON: the setting, the /compress answer (seed 0), the seeds and the
    paired verdict, the curve points, sharpness and the landscape numbers (when computed)."""
    s = view.setting
    verdict = ex.verdict(view.model, s, compute=False)
    curves = ex.curves(view.model, s, schedule=False)
    out: dict[str, Any] = {
        "model": view.model, "model_name": ex.describe(view.model), "setting": s.as_dict(),
        "setting_label": s.label(), "url_query": panels.query_of(view.model, s), "answer": view.answer,
        "verdict": {k: v for k, v in verdict.items() if k != "comparison"},
        "comparison": verdict.get("comparison"),
        "curves": {k: _frame_rows(curves[k]) for k in ("sparsity", "nm", "bits")},
        "curves_complete": curves["complete"], "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out["sharpness"] = ex.cached_sharpness(view.model)  # cached numbers only: exporting never computes a probe
    level = ex.landscape_level(view.model, s)
    if level is not None:
        lands = ex.landscape(view.model, s, level=level)
        out["landscape"] = {a["role"]: {"resolution": a["resolution"], "path": a["path"].to_dict(),
                                        "plane": a["plane"].to_dict()} for a in lands.values()}
    return out


def _html(markdown: str) -> str:
    """Markdown (with the app's inline HTML, e.g. view tags) rendered to HTML."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).render(markdown)


def export_view(ex: Any, view: View, kind: str = "contour", scale: str = "log10") -> list[str]:
    """Write ``craftlab-<model>-<setting>.json`` and ``.html`` (the words and all figures of the view) to a
    temporary folder; their paths."""
    data = view_json(ex, view)
    data["url_query"] = panels.query_of(view.model, view.setting, kind, scale)
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"craftlab-{view.model}-{view.setting.label()}").strip("_")
    folder = Path(tempfile.mkdtemp(prefix="craftlab-export-"))
    js = folder / f"{stem}.json"
    js.write_text(json.dumps(data, indent=1, default=str))
    curves = ex.curves(view.model, view.setting, schedule=False)
    fig_list = [figs.sparsity_curve_figure(curves, view.setting, view.answer, view.tag),
                figs.bits_curve_figure(curves, view.setting, view.answer, view.tag)]
    level = ex.landscape_level(view.model, view.setting)
    if level is not None:
        lands = ex.landscape(view.model, view.setting, level=level)
        fig_list.append(figs.path_figure(lands, tag=view.tag))
        fig_list += figs.plane_figures(lands, kind=kind, log=scale != "linear", tag=view.tag)
    verdict = ex.verdict(view.model, view.setting, compute=False)
    try:  # sharpness plots only from what is cached: exporting never computes a probe
        from .sharpness import MEASURES

        table = ex.sharpness_table(view.model, view.setting, schedule=False)
        if len(table):
            fig_list[2:2] = [figs.sharpness_gap_figure(table, view.tag, MEASURES),
                             figs.sharpness_scatter(table, "lambda_max", MEASURES["lambda_max"], view.tag)]
    except (KeyError, ValueError, TypeError):
        pass
    bn = ex.has_batchnorm(view.model)
    card_p, card_c = panels.cards(view.answer, verdict, view.model,
                                  bn_used=view.setting.recalibrate_bn if bn else None)
    preset = panels.preset_of(view.model, view.setting)
    words = [panels.summary(view.answer, data["model_name"]), card_p, card_c,
             panels.interpretation(verdict, view.model, view.setting.label()),
             panels.guide_text(preset, verdict) if preset else "", f"Link: `{data['url_query']}`"]
    parts = [f"<h1>CraftLab · {view.tag}</h1>", *(_html(w) for w in words if w)]
    for i, f in enumerate(fig_list):
        parts.append(f.to_html(full_html=False, include_plotlyjs=(i == 0)))
    page = folder / f"{stem}.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>CraftLab export</title></head><body>"
                    + "\n".join(parts) + "</body></html>")
    return [str(js), str(page)]
