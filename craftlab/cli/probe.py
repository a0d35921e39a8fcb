"""``craftlab sharpness`` and ``craftlab landscape``: probes of a checkpoint (or a compressed one)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..settings import DEFAULT_RECIPE
from ._args import compress_args, data_for, setting_of


def add_parser(sub: Any) -> None:
    """Add sharpness and landscape."""
    s = sub.add_parser("sharpness", help="Hessian lambda_max, trace and eps-sharpness of a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    s.add_argument("--batch-size", type=int, default=128, help="probe batch: the first N training images (default 128)")
    s.add_argument("--rho", type=float, default=0.05, help="radius of the eps-sharpness ball")
    s.add_argument("--adaptive", action="store_true", help="ASAM's scale-invariant ball")
    s.add_argument("--samples", type=int, default=4, help="Hutchinson probes for the trace (default 4, as the app)")
    s.add_argument("--max-iter", type=int, default=10, help="Lanczos Hessian-vector products (default 10, as the app)")
    s.add_argument("--tol", type=float, default=1e-2, help="Lanczos relative tolerance (default 1e-2, as the app)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("landscape", help="loss landscape around a checkpoint: line, plane or compression slice")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--kind", default="plane", choices=["line", "plane", "compression"],
                   help="a line or a plane through random filter-normalized directions, or the compression slice "
                        "(the path w -> C(w) and the plane around it)")
    s.add_argument("--steps", type=int, default=None, help="grid points per axis (line 51, plane 21, path 41)")
    s.add_argument("--distance", type=float, default=1.0, help="half-width of line/plane in filter-normalized units")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--surface", action="store_true", help="plane as a 3-D surface instead of contours")
    compress_args(s)
    s.add_argument("--out", required=True, help="FILE.json or FILE.html; both are written")
    s.add_argument("--json", action="store_true", help="print the result (as in FILE.json) instead of the paths")



def _probe_batch(a: argparse.Namespace):
    """The checkpoint's model and its data's probe batch (the first `--batch-size` training images, as in the
    app and the notebooks); a compressed checkpoint (``compress --out``) is probed as the compressed model."""
    from ..compression.pipeline import load_compressed

    model = load_compressed(a.checkpoint)
    data = data_for(model.craftlab_meta, model, a.data)
    return model, data, data.probe_batches(a.batch_size)[0]


def cmd_sharpness(a: argparse.Namespace) -> int:
    from ..probes.sharpness import sharpness_summary

    model, _, batch = _probe_batch(a)
    res = sharpness_summary(model, batch, rho=a.rho, adaptive=a.adaptive, n_samples=a.samples,
                             max_iter=a.max_iter, tol=a.tol)
    res = {"checkpoint": str(a.checkpoint), "batch_size": len(batch[1]), "rho": a.rho, "adaptive": a.adaptive, **res}
    if a.json:
        print(json.dumps(res, default=float))
    else:
        print(f"{a.checkpoint}: loss {res['loss']:.4f}, lambda_max {res['lambda_max']:.4g}, "
              f"trace {res['trace']:.4g} ± {res['trace_stderr']:.2g}, eps-sharpness(rho={a.rho}) "
              f"{res['eps_sharpness']:.4g}  [{res['seconds']:.1f} s, {len(batch[1])} images]")
    return 0


def cmd_landscape(a: argparse.Namespace) -> int:
    from ..compression.pipeline import compress
    from ..probes import landscape
    from ..viz import plots

    if a.kind != "compression" and (a.recipe != DEFAULT_RECIPE or a.compensate or a.quant_method):
        raise ValueError(f"--recipe/--compensate/--quant-method apply to --kind compression, not --kind {a.kind}")
    setting, settings = setting_of(a) if a.kind == "compression" else (None, {})
    if setting is not None:
        if setting.is_identity:
            raise ValueError("--kind compression needs a compression: --sparsity, --pattern, --w-bits or --a-bits")
        problem = setting.weight_path_problem()
        if problem:
            flag, fix = ((f"--recipe {setting.recipe}", f"use --recipe {DEFAULT_RECIPE}")
                         if setting.recipe != DEFAULT_RECIPE else
                         ("--compensate qwt", "use --compensate qwt-v2 (folded into the layers)"))
            raise ValueError(f"--kind compression with {flag}: {problem}; {fix}")
    model, data, batch = _probe_batch(a)
    if a.kind == "line":
        res = landscape.line(model, batch, distance=a.distance, steps=a.steps or 51, seed=a.seed)
        fig = plots.line_figure({Path(a.checkpoint).name: res})
    elif a.kind == "plane":
        res = landscape.plane(model, batch, distance=a.distance, steps=a.steps or 21, seed=a.seed)
        fig = plots.plane_figure(res, kind="surface" if a.surface else "contour")
    else:
        compressed = compress(model, calib=data.calib, **settings)
        res = landscape.compression_path(model, compressed, batch, steps=a.steps or 41)
        fig = plots.compression_path_figure(res)
    out = Path(a.out)
    base = out.with_suffix("") if out.suffix in (".json", ".html") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(res.to_dict()))
    fig.write_html(str(base.with_suffix(".html")), include_plotlyjs=True)
    if a.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"wrote {base.with_suffix('.json')} and {base.with_suffix('.html')}")
    return 0


COMMANDS = {"sharpness": cmd_sharpness, "landscape": cmd_landscape}


def run(a: argparse.Namespace) -> int:
    return COMMANDS[a.command](a)
