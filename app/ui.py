"""The CraftLab Gradio app: a plain fine-tuned model and its CrAFT (SAM) twin, side by side, under
pruning and quantization — accuracy, curves, sharpness and loss landscapes, live.

This module is wiring only: layout, and callbacks that turn a request's raw input into a
:class:`craftlab.settings.Setting` (``make_setting``, once per request) or a RunSpec
(:func:`craftlab_app.training.make_run_spec`), call :class:`craftlab_app.service.Explorer` (which owns every
cache and computation) and draw with :mod:`craftlab_app.figures`. A slider release runs ``/compress``,
which keeps the validated setting in the session (a ``gr.State``); the cards, curves and landscapes that
follow it read that state instead of validating the raw input again.

Every event has an ``api_name``. ``/compress`` is the contract (``model, method, sparsity, w_bits,
a_bits`` [, ``granularity``, ``pattern``] -> JSON with each arm's ``fp_accuracy`` and
``compressed_accuracy``); ``/landscape`` takes the same inputs and ``kind``; ``/sharpness`` a model;
``/train`` a run. The state-driven follow-ups (``/curves``, ``/landscape_view``, ``/landscape_kind``)
answer about the session's last ``/compress``.

Run: ``craftlab app [--host 127.0.0.1] [--port 7860]`` or ``python -m app``. Environment (all optional):
``CRAFTLAB_APP_MODELS`` (comma-separated models warmed at start, default ``vit-tiny,resnet-tiny``),
``CRAFTLAB_APP_EPOCHS`` (epochs of the default arms, default 8), ``CRAFTLAB_APP_THREADS`` (torch
intra-op threads, default 1: see :mod:`craftlab_app.service` for why).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from craftlab.settings import DEFAULT_SETTING, Setting, make_setting

from . import figures as figs
from .service import Explorer
from .texts import CSS, LEARN
from .training import make_run_spec

DEFAULT_MODELS = ("vit-tiny", "resnet-tiny")
BITS_CHOICES = [("float (None)", "None"), ("16", "16"), ("8", "8"), ("7", "7"), ("6", "6"), ("5", "5"), ("4", "4"),
                ("3", "3"), ("2", "2")]
DATASETS = ["digits", "mnist5k", "cifar10", "cifar100", "fashion_mnist", "mnist", "flowers102", "oxford_pets"]
INITIAL = {"method": "magnitude", "sparsity": 0.5, "w_bits": "None", "a_bits": "None", "granularity": "channel",
           "pattern": "2:4", "kind": "contour"}
PATTERN_CHOICES = [(f"{p} (keep {p[0]} of {p[2:]})", p) for p in ("2:4", "1:4", "4:8", "1:2")]
"""N:M patterns offered: N weights kept of every M; the value sent is the bare pattern make_setting parses."""
ROLES = ("plain", "craft")
ROLE_TITLES = {"plain": "", "craft": "CrAFT · "}
"""Put before an arm's label (``craftlab.train.runs.arm_label``: ``AdamW``, ``SAM ρ=0.05``) on its card."""
Query = tuple[str, Setting]
"""What a /compress request asked (model, validated setting): kept in the session for the follow-ups."""


# ----------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors craftlab raises for bad input (ValueError, CheckpointError, ...) into a gr.Error
    whose message names the problem; the app keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as err:
        raise gr.Error(str(err) or type(err).__name__, print_exception=False) from err


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _gr_progress(progress: Any):
    if progress is None:
        return None
    return lambda frac, desc: progress(frac, desc=desc)


def _validated_by_craftlab(*components: Any) -> None:
    """Let API values reach the one validation (``make_setting``, ``make_run_spec``), whose messages name the
    parameter (e.g. "sparsity must be in [0, 1), got 1.5"), instead of Gradio's own range / choice check
    with other limits."""
    for c in components:
        c.preprocess = lambda payload: payload


def _by_role(arms: dict[str, Any]) -> dict[str, Any]:
    return {a["role"]: a for a in arms.values()}


# ----------------------------------------------------------------------------------------------
# callbacks (plain methods, so they can be tested without a server)


class Callbacks:
    """Every event handler of the app; thin wrappers around a :class:`~craftlab_app.service.Explorer`."""

    def __init__(self, explorer: Explorer) -> None:
        self.ex = explorer

    # --- explore -------------------------------------------------------------------------------

    def compress(self, model: str, method: str, sparsity: float, w_bits: Any, a_bits: Any,
                 granularity: str = "channel", pattern: str = "2:4",
                 progress: gr.Progress = gr.Progress()) -> tuple[dict[str, Any], Query]:  # noqa: B008 (Gradio's idiom)
        """Full-precision and compressed test accuracy of both fine-tuning arms of `model`, and the request
        (model, Setting) for the session's follow-ups. The one validation of a slider release."""
        with user_errors():
            setting = make_setting(method, sparsity, w_bits, a_bits, granularity, pattern)
            answer = self.ex.compress(model, setting, progress=_gr_progress(progress))
        return answer, (answer["model"], setting)

    def cards(self, result: dict[str, Any] | None) -> tuple[str, str, str]:
        """(summary, plain card, craft card) markdown of a /compress answer."""
        if not result or "arms" not in result:
            return "", "", ""
        arms = _by_role(result["arms"])
        setting = result.get("setting", {})
        quantized = setting.get("w_bits") is not None or setting.get("a_bits") is not None
        cards = []
        for role in ROLES:
            a = arms.get(role)
            if a is None:
                cards.append(f"### {ROLE_TITLES[role] or 'plain'}\n_This checkpoint has no {role} "
                             "twin: train one in the **Train** tab._")
                continue
            what = result.get("setting_text", result["setting_label"])
            cards.append(
                f"### {ROLE_TITLES[role]}{a['label']}\n"
                f"<span class='big'>{_pct(a['compressed_accuracy'])}</span> compressed &nbsp;·&nbsp; "
                f"FP {_pct(a['fp_accuracy'])} &nbsp;·&nbsp; drop **{100 * a['accuracy_drop']:+.1f} pts**\n\n"
                f"{what} · measured sparsity {a['sparsity_measured']:.1%}"
                + (f" · weights {a['size_mb']:.3f} MB (FP {a['fp_size_mb']:.3f} MB)" if quantized else "")
                + f" · `{a['checkpoint']}`")
        summary = f"**{result['model']}** — {result.get('setting_text', result['setting_label'])}"
        if "plain" in arms and "craft" in arms:
            p, c = arms["plain"], arms["craft"]
            gap = 100 * (c["compressed_accuracy"] - p["compressed_accuracy"])
            summary += (f": {p['label']} loses {100 * p['accuracy_drop']:.1f} pts, CrAFT ({c['label']}) loses "
                        f"{100 * c['accuracy_drop']:.1f} pts; compressed, CrAFT is **{gap:+.1f} pts** "
                        f"vs {p['label']}.")
        return summary, cards[0], cards[1]

    def curves(self, result: dict[str, Any] | None, query: Query | None) -> tuple[Any, Any, Any]:
        """Accuracy-vs-sparsity and accuracy-vs-bits figures (cached sweeps) of the session's last /compress,
        and whether to poll again."""
        if query is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        model, setting = query
        with user_errors():
            c = self.ex.curves(model, granularity=setting.granularity)
        return (figs.sparsity_curve_figure(c, setting, result), figs.bits_curve_figure(c, setting, result),
                gr.Timer(active=not c["complete"]))

    def sharpness(self, model: str, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:  # noqa: B008
        """Sharpness markdown of both full-precision arms."""
        with user_errors():
            res = _by_role(self.ex.sharpness(model, progress=_gr_progress(progress)))
        out = []
        for role in ROLES:
            s = res.get(role)
            if s is None:
                out.append("")
                continue
            out.append(f"**Sharpness of the fine-tuned weights** ({s['n_examples']} training images): "
                       f"λmax **{s['lambda_max']:.3g}** · trace **{s['trace']:.3g}** ± {s['trace_stderr']:.2g} · "
                       f"ε-sharpness (ρ={s['rho']:g}) **{s['eps_sharpness']:.3g}**")
        return out[0], out[1]

    def landscape(self, model: str, method: str, sparsity: float, w_bits: Any, a_bits: Any,
                  granularity: str = "channel", pattern: str = "2:4", kind: str = "contour",
                  progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, Any]:  # noqa: B008
        """The 1-D compression-direction slice (both arms) and one 2-D landscape per arm (stateless API)."""
        with user_errors():
            setting = make_setting(method, sparsity, w_bits, a_bits, granularity, pattern)
        return self.landscape_of((model, setting), kind, progress)

    def landscape_of(self, query: Query | None, kind: str = "contour",
                     progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, Any]:  # noqa: B008
        """The landscapes of a validated request (the session's last /compress): figures drawn as `kind`."""
        if query is None:
            return gr.skip(), gr.skip(), gr.skip()
        model, setting = query
        with user_errors():
            prog = _gr_progress(progress)
            if prog is not None and not self.ex.has_landscape(model, setting):
                prog(0.0, "computing the loss landscapes of both arms…")
            lands = self.ex.landscape(model, setting, progress=prog)
            planes = dict(zip([a["role"] for a in lands.values()], figs.plane_figures(lands, kind=kind)))
        blank = figs.empty_figure("no such arm for this checkpoint", figs.LANDSCAPE_HEIGHT)
        return figs.path_figure(lands), planes.get("plain", blank), planes.get("craft", blank)

    def model_list(self, current: str | None = None) -> Any:
        """Refresh the model picker (new cached runs appear)."""
        return gr.Dropdown(choices=self.ex.model_choices(), value=current)

    def status(self) -> tuple[str, Any]:
        """Start-up status line; the timer stops once the default models are ready."""
        st = self.ex.status()
        training = [r for r in st["runs"] if not r["done"]]
        if st["stage"] == "ready" or (st["stage"] == "idle" and not training):
            extra = f" · {st['pending']} curve points computing in the background" if st["pending"] else ""
            return f"**Ready**{extra}.", gr.Timer(active=bool(st["pending"]))
        if st["stage"] == "failed":
            return f"**Preparing the default models failed:** {st['error']}", gr.Timer(active=False)
        runs = " · ".join(r["text"] for r in training)
        return (f"**Preparing the default models** ({st['stage']}; first start only, cached afterwards): "
                f"{runs or 'loading…'}"), gr.Timer(active=True)

    # --- train ---------------------------------------------------------------------------------

    def train(self, model: str, data: str, optimizer: str, rho: float, adaptive: bool, epochs: float,
              seed: float = 0, twin: bool = True,
              progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any]]:  # noqa: B008
        """Fine-tune `model` on `data` (and its plain / SAM twin), streaming a status line and the loss curve."""
        with user_errors():
            spec = make_run_spec(model, data, optimizer, rho, adaptive, epochs, seed)  # the one validation
            for st in self.ex.train_stream(spec, twin=bool(twin)):
                total = sum(r["epochs"] for r in st["runs"])
                done = sum(len(r["history"]) for r in st["runs"])
                if not st["done"]:
                    progress(done / max(total, 1), desc=f"fine-tuning: epoch {done}/{total} over "
                                                        f"{len(st['runs'])} run(s)")
                lines = []
                for r in st["runs"]:
                    state = ("cached" if r["cached"] else "done") if r["done"] else \
                        (f"epoch {len(r['history'])}/{r['epochs']}" if r.get("running") else "queued")
                    acc = f", test accuracy {_pct(r['test_accuracy'])}" if r.get("test_accuracy") is not None else ""
                    lines.append(f"* `{r['key']}` ({r['label']}): {state}{acc}")
                head = "**Done** — pick it in **Explore**." if st["done"] else "**Fine-tuning…**"
                picker = (gr.Dropdown(choices=self.ex.model_choices(), value=st["key"]) if st["done"]
                          else gr.skip())
                yield head + "\n\n" + "\n".join(lines), figs.training_figure(st), picker


# ----------------------------------------------------------------------------------------------
# layout


def build_app(models: Sequence[str] | None = None, epochs: int | None = None, explorer: Explorer | None = None,
              warm: bool = True, threads: int | None = None) -> gr.Blocks:
    """The CraftLab Blocks app.

    Args:
        models: models prepared in the background at start (fine-tuned when not cached; their curve
            points computed); the first is shown first. Default ``CRAFTLAB_APP_MODELS`` or vit-tiny, resnet-tiny.
        epochs: fine-tuning epochs of the zoo models' arms (default ``CRAFTLAB_APP_EPOCHS`` or 8).
        explorer: use this :class:`~craftlab_app.service.Explorer` (e.g. with smaller grids, in tests).
        warm: start the background preparation (and start-up status polling).
        threads: torch intra-op threads (process-wide; default ``CRAFTLAB_APP_THREADS`` or 1).
    """
    import torch

    if models is None:
        env = os.environ.get("CRAFTLAB_APP_MODELS")
        models = tuple(m.strip() for m in env.split(",") if m.strip()) if env else DEFAULT_MODELS
    models = list(models) or list(DEFAULT_MODELS)
    if explorer is None:
        explorer = Explorer(epochs=epochs or _env_int("CRAFTLAB_APP_EPOCHS", 8))
    torch.set_num_threads(max(1, threads or _env_int("CRAFTLAB_APP_THREADS", 1)))
    cb = Callbacks(explorer)
    initial_setting = make_setting(INITIAL["method"], INITIAL["sparsity"], INITIAL["w_bits"], INITIAL["a_bits"])

    with gr.Blocks(title="CraftLab", analytics_enabled=False) as demo:
        gr.Markdown("# CraftLab — compression-aware fine-tuning, live\n"
                    "A plain fine-tuned model (**AdamW**, blue) and its **CrAFT** twin (same schedule + SAM, red), "
                    "side by side: move a slider and see how accuracy, sharpness and the loss landscape respond "
                    "to pruning and quantization.")
        status = gr.Markdown("starting…", elem_id="status")
        status_timer = gr.Timer(1.0, active=warm)

        with gr.Tab("Explore", id="explore"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=260):
                    model = gr.Dropdown(choices=explorer.model_choices(), value=models[0], label="model",
                                        allow_custom_value=True, elem_id="model",
                                        info=f"zoo model (both arms, {explorer.epochs} epoch"
                                             f"{'s' if explorer.epochs != 1 else ''} on {explorer.data}), "
                                             "a cached run, or a timm name (online)")
                    method = gr.Radio(["magnitude", "wanda", "N:M"], value=INITIAL["method"], label="pruning method",
                                      elem_id="method")
                    sparsity = gr.Slider(0.0, 0.95, value=INITIAL["sparsity"], step=0.05, label="sparsity",
                                         elem_id="sparsity",
                                         info="fraction of weights zeroed (N:M fixes it at 1 − N/M)")
                    pattern = gr.Dropdown(PATTERN_CHOICES, value=INITIAL["pattern"], label="N:M pattern",
                                          allow_custom_value=True, elem_id="pattern",
                                          info="N:M keeps N of every M weights (2:4 = 50 % sparse)")
                    with gr.Row():
                        w_bits = gr.Dropdown(BITS_CHOICES, value=INITIAL["w_bits"], label="weight bits",
                                             allow_custom_value=True, elem_id="w_bits", min_width=100)
                        a_bits = gr.Dropdown(BITS_CHOICES, value=INITIAL["a_bits"], label="activation bits",
                                             allow_custom_value=True, elem_id="a_bits", min_width=100)
                    granularity = gr.Radio(["channel", "tensor"], value=INITIAL["granularity"],
                                           label="weight quantization granularity", elem_id="granularity")
                    kind = gr.Radio(["contour", "surface"], value=INITIAL["kind"], label="2-D landscape as",
                                    elem_id="kind")
                    with gr.Accordion("/compress answer (JSON)", open=False):
                        answer = gr.JSON(label="answer", elem_id="answer")
                with gr.Column(scale=4):
                    summary = gr.Markdown(elem_id="summary")
                    with gr.Row(equal_height=True):
                        with gr.Column(elem_classes="arm-card", elem_id="card-plain"):
                            card_plain = gr.Markdown(elem_id="acc-plain")
                            sharp_plain = gr.Markdown(elem_id="sharp-plain")
                        with gr.Column(elem_classes="arm-card", elem_id="card-craft"):
                            card_craft = gr.Markdown(elem_id="acc-craft")
                            sharp_craft = gr.Markdown(elem_id="sharp-craft")
                    with gr.Row():
                        curve_sparsity = gr.Plot(label="accuracy vs sparsity", elem_id="curve-sparsity")
                        curve_bits = gr.Plot(label="accuracy vs bits", elem_id="curve-bits")
                    curve_timer = gr.Timer(1.5, active=False)
            path_plot = gr.Plot(label="1-D: loss along the compression direction", elem_id="path")
            with gr.Row():
                plane_plain = gr.Plot(label="2-D landscape: AdamW", elem_id="plane-plain")
                plane_craft = gr.Plot(label="2-D landscape: CrAFT", elem_id="plane-craft")

        with gr.Tab("Train", id="train"):
            gr.Markdown("Fine-tune a model with a chosen optimizer, SAM radius ρ and epochs. With *twin*, the same "
                        "run without SAM (or with ρ = 0.05 when ρ = 0) is trained too, so Explore can compare them. "
                        "Runs are cached: the same settings never train twice.")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    t_model = gr.Dropdown(["vit-tiny", "resnet-tiny"], value="vit-tiny", label="model",
                                          allow_custom_value=True, info="zoo model, or a timm name (online)")
                    t_data = gr.Dropdown(DATASETS, value="digits", label="dataset", allow_custom_value=True,
                                         info="digits / mnist5k offline; others download (or imagefolder:PATH)")
                    t_opt = gr.Radio(["adamw", "sgd"], value="adamw", label="optimizer")
                    t_rho = gr.Slider(0.0, 0.5, value=0.05, step=0.01, label="SAM ρ (0 = no SAM)")
                    t_adaptive = gr.Checkbox(False, label="ASAM (adaptive; use a ~10x larger ρ)")
                    t_epochs = gr.Slider(1, 30, value=3, step=1, label="epochs")
                    t_seed = gr.Number(0, label="seed", precision=0)
                    t_twin = gr.Checkbox(True, label="also train the twin arm")
                    t_go = gr.Button("Fine-tune", variant="primary", elem_id="train-button")
                with gr.Column(scale=3):
                    t_status = gr.Markdown(elem_id="train-status")
                    t_plot = gr.Plot(label="loss per epoch", elem_id="train-plot")

        with gr.Tab("Learn", id="learn"):
            gr.Markdown(LEARN)

        # ---------------------------------------------------------------- events
        _validated_by_craftlab(method, sparsity, granularity, t_rho, t_epochs, t_seed)
        query = gr.State(None)  # (model, Setting) of the session's last /compress: validated once
        api_landscape = gr.Button(visible=False)  # carries the stateless /landscape API endpoint
        setting_inputs = [model, method, sparsity, w_bits, a_bits, granularity, pattern]
        landscape_outputs = [path_plot, plane_plain, plane_craft]
        sharp_kw = {"concurrency_limit": 1, "concurrency_id": "sharpness"}
        probe_kw = {"concurrency_limit": 1, "concurrency_id": "landscape", "show_progress": "minimal"}
        dep = gr.on([demo.load, model.change, method.change, sparsity.release, w_bits.change, a_bits.change,
                     granularity.change, pattern.change],
                    cb.compress, inputs=setting_inputs, outputs=[answer, query], api_name="compress",
                    trigger_mode="always_last", concurrency_limit=4, show_progress="minimal",
                    show_progress_on=summary)  # visible while a model's arms are fine-tuned
        dep = dep.success(cb.cards, inputs=answer, outputs=[summary, card_plain, card_craft], api_name="cards",
                          show_progress="hidden", queue=False)
        curve_outputs = [curve_sparsity, curve_bits, curve_timer]
        dep = dep.success(cb.curves, inputs=[answer, query], outputs=curve_outputs, api_name="curves",
                          show_progress="hidden", concurrency_limit=None, api_visibility="undocumented")
        # the probes run side by side; while one is busy, only the latest request waits (slider drags)
        dep.success(cb.sharpness, inputs=model, outputs=[sharp_plain, sharp_craft], api_name="sharpness",
                    show_progress="minimal", trigger_mode="always_last", **sharp_kw)
        dep.success(cb.landscape_of, inputs=[query, kind], outputs=landscape_outputs, api_name="landscape_view",
                    trigger_mode="always_last", api_visibility="undocumented", **probe_kw)
        curve_timer.tick(cb.curves, inputs=[answer, query], outputs=curve_outputs, api_name="curves_refresh",
                         show_progress="hidden", concurrency_limit=None, api_visibility="undocumented")
        kind.change(cb.landscape_of, inputs=[query, kind], outputs=landscape_outputs, api_name="landscape_kind",
                    trigger_mode="always_last", api_visibility="undocumented", **probe_kw)
        api_landscape.click(cb.landscape, inputs=[*setting_inputs, kind], outputs=landscape_outputs,
                            api_name="landscape", **probe_kw)
        status_timer.tick(cb.status, outputs=[status, status_timer], api_name="status", show_progress="hidden",
                          queue=False)
        demo.load(cb.status, outputs=[status, status_timer], api_name="status_on_load", show_progress="hidden",
                  queue=False)
        demo.load(cb.model_list, inputs=model, outputs=model, api_name="models", show_progress="hidden", queue=False)
        t_go.click(cb.train, inputs=[t_model, t_data, t_opt, t_rho, t_adaptive, t_epochs, t_seed, t_twin],
                   outputs=[t_status, t_plot, model], api_name="train", concurrency_limit=1, concurrency_id="train")

    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.explorer = explorer  # type: ignore[attr-defined]
    demo.callbacks = cb  # type: ignore[attr-defined]
    if warm:
        explorer.warm(models, setting=initial_setting if initial_setting != DEFAULT_SETTING else None)
    return demo


def _report_startup(explorer: Explorer, stop: threading.Event) -> None:
    """Print the warm-up progress on the terminal until the default models are ready."""
    last = ""
    while not stop.is_set():
        st = explorer.status()
        runs = [r for r in st["runs"] if not r["done"]]
        line = st["stage"] + ("" if not runs else ": " + ", ".join(r["text"] for r in runs))
        if line != last:
            print(f"[craftlab app] {line}", file=sys.stderr, flush=True)
            last = line
        if st["stage"] in ("ready", "failed"):
            return
        stop.wait(2.0)


def launch(host: str = "127.0.0.1", port: int = 7860, prevent_thread_lock: bool = False, **kw: Any) -> gr.Blocks:
    """Build and serve the app; returns the Blocks (blocks until interrupted unless `prevent_thread_lock`).

    Keyword arguments of :func:`build_app` (``models``, ``epochs``, ``explorer``, ``warm``, ``threads``) are
    taken from `kw`; the rest go to ``Blocks.launch``. The server starts at once; the default models are
    fine-tuned (first start only) or loaded in the background, with progress in the page and on stderr.
    """
    build_kw = {k: kw.pop(k) for k in ("models", "epochs", "explorer", "warm", "threads") if k in kw}
    t0 = time.perf_counter()
    demo = build_app(**build_kw)
    kw.setdefault("quiet", prevent_thread_lock)
    if "ssr_mode" in inspect.signature(gr.Blocks.launch).parameters:
        kw.setdefault("ssr_mode", False)  # no Node server: one process, offline
    stop = threading.Event()
    if build_kw.get("warm", True):
        threading.Thread(target=_report_startup, args=(demo.explorer, stop), daemon=True).start()  # type: ignore[attr-defined]
    if "css" in inspect.signature(demo.launch).parameters:  # Gradio 6 takes css at launch, older ones in Blocks
        kw.setdefault("css", CSS)
    else:
        demo.css = CSS
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, **kw)
    if not kw["quiet"]:
        print(f"[craftlab app] serving on http://{host}:{port} ({time.perf_counter() - t0:.1f} s after start)",
              file=sys.stderr, flush=True)
    if prevent_thread_lock:
        return demo
    try:
        demo.block_thread()
    finally:
        stop.set()
        demo.explorer.close()  # type: ignore[attr-defined]
    return demo
