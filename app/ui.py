"""The CraftLab Gradio app: a plain fine-tuned model and its CrAFT (SAM) twin, side by side, under
pruning and quantization — accuracy over seeds, curves, sharpness and loss landscapes, live.

This module is wiring only: layout, and events that call :class:`craftlab_app.callbacks.Callbacks`. Every
control's ``change`` (typing in the slider's box, arrow keys, drags, presets, the URL) runs ``/compress``, which
validates the input once (``make_setting``) and opens a new *view* of the session (:mod:`craftlab_app.view`);
the follow-ups draw every panel from that view, titled with its tag, and drop their answer when a newer view
replaced it. ``trigger_mode="always_last"`` keeps at most one pending request per event.

Every event has an ``api_name``. ``/compress`` is the contract (``model, method, sparsity, w_bits, a_bits``
[, ``granularity``, ``pattern``, ``recalibrate_bn``, ``recipe``, ``compensation``] -> JSON with each arm's
``fp_accuracy`` and ``compressed_accuracy``); ``/landscape`` takes the same inputs and ``kind`` (stateless);
``/train`` a run. The view-driven follow-ups (``/panels``, ``/seeds``, ``/sharpness``, ``/landscape_view``,
``/refresh``, ``/export``) answer about the session's current view.

Run: ``craftlab app [--host 127.0.0.1] [--port 7860]`` or ``python -m craftlab_app``. Environment (all optional):
``CRAFTLAB_APP_MODELS`` (comma-separated models warmed at start, default ``vit-tiny,resnet-tiny``),
``CRAFTLAB_APP_EPOCHS`` (epochs of the default arms, default 8), ``CRAFTLAB_APP_SEEDS`` (their seeds, default
``0,1,2``: seed 0 answers, the others are fine-tuned in the background), ``CRAFTLAB_THREADS`` (torch intra-op threads:
:func:`craftlab.threads.configure_threads`; ``CRAFTLAB_APP_THREADS`` is an alias).
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr

from craftlab.data import OFFLINE, TORCHVISION
from craftlab.settings import DEFAULT_SETTING, make_setting
from craftlab.threads import configure_threads

from . import adapt_view, compose_view, supernet_view
from .callbacks import Callbacks, user_errors
from .concurrency import Deferred
from .links import (  # noqa: F401 (re-exported)
    BITS_CHOICES,
    COMPENSATION_CHOICES,
    INITIAL,
    METHODS,
    PATTERN_CHOICES,
    RECIPE_CHOICES,
    SPARSITY_MAX,
)
from .panels import PRESETS
from .texts import CSS, HEAD, PLANE_NOTE, learn_text
from .train_ui import pretrain_section
from .training import MAX_EPOCHS, MAX_RHO

if TYPE_CHECKING:
    from .service import Explorer

__all__ = ["BITS_CHOICES", "Callbacks", "build_app", "launch", "user_errors"]

DEFAULT_MODELS = ("vit-tiny", "resnet-tiny")
DATASETS = [*OFFLINE, *TORCHVISION]


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _preset_fn(cb: Callbacks, key: str) -> Any:
    def preset() -> tuple[Any, ...]:
        return cb.preset(key)

    return preset


def _controls(choices: list[tuple[str, str]], first: str, info: str) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["model"] = gr.Dropdown(choices=choices, value=first, label="model", allow_custom_value=True, elem_id="model",
                             info=info)
    c["method"] = gr.Radio(list(METHODS), value=INITIAL["method"], label="pruning method",
                           elem_id="method")
    c["sparsity"] = gr.Slider(0.0, SPARSITY_MAX, value=INITIAL["sparsity"], step=0.05, label="sparsity",
                              elem_id="sparsity", info="fraction of weights zeroed")
    c["pattern"] = gr.Dropdown(PATTERN_CHOICES, value=INITIAL["pattern"], label="N:M pattern", visible=False,
                               elem_id="pattern", info="keeps N of every M weights (2:4 = 50 % sparse)")
    with gr.Row():
        c["w_bits"] = gr.Dropdown(BITS_CHOICES, value=INITIAL["w_bits"], label="weight bits", allow_custom_value=True,
                                  elem_id="w_bits", min_width=100)
        c["a_bits"] = gr.Dropdown(BITS_CHOICES, value=INITIAL["a_bits"], label="activation bits",
                                  allow_custom_value=True, elem_id="a_bits", min_width=100)
    c["granularity"] = gr.Radio(["channel", "tensor"], value=INITIAL["granularity"],
                                label="weight quantization granularity", elem_id="granularity")
    c["bn"] = gr.Checkbox(False, label="re-estimate BatchNorm statistics after compression (CNNs)", elem_id="bn")
    c["recipe"] = gr.Radio(RECIPE_CHOICES, value=INITIAL["recipe"], label="quantization recipe", elem_id="recipe",
                           info="repq: RepQ-ViT (ViTs only; quantized attention)")
    c["compensation"] = gr.Radio(COMPENSATION_CHOICES, value=INITIAL["compensation"], label="compensation",
                                 elem_id="compensation",
                                 info="closed-form fit on the calibration set after compression (QwT papers)")
    return c


def build_app(models: Sequence[str] | None = None, epochs: int | None = None, explorer: Explorer | None = None,
              warm: bool = True, threads: int | None = None, supernet_service: Any = None,
              adapt_service: Any = None, compose_service: Any = None) -> gr.Blocks:
    """The CraftLab Blocks app.

    Args:
        models: models prepared in the background at start (fine-tuned when not cached; their curve
            points computed; their extra seeds fine-tuned); the first is shown first. Default
            ``CRAFTLAB_APP_MODELS`` or vit-tiny, resnet-tiny.
        epochs: fine-tuning epochs of the zoo models' arms (default ``CRAFTLAB_APP_EPOCHS`` or 8).
        explorer: use this :class:`~craftlab_app.service.Explorer` (e.g. with smaller grids, in tests).
        warm: start the background preparation (and start-up status polling).
        threads: torch intra-op threads (process-wide), by :func:`craftlab.threads.configure_threads`.
        supernet_service, adapt_service, compose_service: the Supernet, Adapt and Compose tabs' services
            (:class:`~craftlab_app.supernet_service.SupernetView`, :class:`~craftlab_app.adapt_service.AdaptView`;
            default: new ones, which prepare nothing until their tab is opened).
    """
    if models is None:
        env = os.environ.get("CRAFTLAB_APP_MODELS")
        models = tuple(m.strip() for m in env.split(",") if m.strip()) if env else DEFAULT_MODELS
    models = list(models) or list(DEFAULT_MODELS)
    initial = make_setting(INITIAL["method"], INITIAL["sparsity"], INITIAL["w_bits"], INITIAL["a_bits"])
    extra = [(p.model, p.setting()) for p in PRESETS if p.model in models]
    n_epochs = epochs or _env_int("CRAFTLAB_APP_EPOCHS", 8)
    seeds = [int(x) for x in os.environ.get("CRAFTLAB_APP_SEEDS", "").split(",") if x.strip().isdigit()]

    def start(ex: Any) -> Any:
        if warm:
            ex.warm(models, setting=initial if initial != DEFAULT_SETTING else None, extra=extra)
        return ex

    def make() -> Any:  # torch, timm, plotly: imported here, on a background thread, while the page is served
        configure_threads(threads, model=models[0])
        from .service import Explorer

        return start(Explorer(epochs=n_epochs, **({"seeds": seeds} if seeds else {})))

    if explorer is None:
        explorer = Deferred(make, name="craftlab-explorer", start=False)  # launch() starts it once serving
        choices = [(f"{m} (AdamW vs CrAFT)", m) for m in dict.fromkeys([*models, *DEFAULT_MODELS])]
        info = f"zoo model (both arms, {n_epochs} epochs on digits), a cached run, or a timm name"
    else:
        configure_threads(threads, model=models[0])
        start(explorer)
        choices = explorer.model_choices()
        info = (f"zoo model (both arms, {explorer.epochs} epoch{'s' if explorer.epochs != 1 else ''} on "
                f"{explorer.data}), a cached run, or a timm name")
    cb = Callbacks(explorer)

    with gr.Blocks(title="CraftLab", analytics_enabled=False) as demo:
        gr.Markdown("# CraftLab — compression-aware fine-tuning, live\n"
                    "A plain fine-tuned model (**AdamW**, blue) and its **CrAFT** twin (same schedule + SAM, red), "
                    "side by side: move a control and every panel below follows, titled with the model and setting "
                    "it shows.")
        status = gr.Markdown("starting…", elem_id="status")
        status_timer = gr.Timer(1.0, active=warm)

        with gr.Tabs(selected="explore") as tabs:
            with gr.Tab("Explore", id="explore"):
                with gr.Row(elem_id="presets"):
                    gr.Markdown("**Guided tour:**")
                    preset_buttons = {p.key: gr.Button(p.title, size="sm", elem_id=f"preset-{p.key}") for p in PRESETS}
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=260):
                        c = _controls(choices, models[0], info)
                        kind = gr.Radio(["contour", "surface"], value=INITIAL["kind"], label="2-D landscape as",
                                        elem_id="kind")
                        scale = gr.Radio(["log10", "linear"], value=INITIAL["scale"], label="loss axis",
                                         elem_id="scale")
                        link = gr.Markdown(elem_id="link")
                        export_btn = gr.Button("Export this view (JSON + HTML)", size="sm", elem_id="export")
                        files = gr.File(label="exported files", file_count="multiple", elem_id="export-files",
                                        visible=False)
                        with gr.Accordion("/compress answer (JSON)", open=False):
                            answer = gr.JSON(label="answer", elem_id="answer")
                    with gr.Column(scale=4):
                        summary = gr.Markdown(elem_id="summary")
                        guide = gr.Markdown(elem_id="guide")
                        with gr.Row(equal_height=True):
                            with gr.Column(elem_classes="arm-card", elem_id="card-plain"):
                                card_plain = gr.Markdown(elem_id="acc-plain")
                                sharp_plain = gr.Markdown(elem_id="sharp-plain")
                            with gr.Column(elem_classes="arm-card", elem_id="card-craft"):
                                card_craft = gr.Markdown(elem_id="acc-craft")
                                sharp_craft = gr.Markdown(elem_id="sharp-craft")
                        verdict = gr.Markdown(elem_id="verdict")
                        sharp_note = gr.Markdown(elem_id="sharp-note")
                        with gr.Row():
                            sharp_gap = gr.Plot(label="sharpness gap", elem_id="sharp-gap")
                            with gr.Column():
                                sharp_measure = gr.Radio([("λmax", "lambda_max"), ("Hessian trace", "trace"),
                                                          ("ε-sharpness", "eps_sharpness")], value="lambda_max",
                                                         label="scatter: sharpness measure", elem_id="sharp-measure")
                                sharp_scatter = gr.Plot(label="accuracy drop vs sharpness", elem_id="sharp-scatter")
                        with gr.Row():
                            curve_sparsity = gr.Plot(label="accuracy vs sparsity", elem_id="curve-sparsity")
                            curve_bits = gr.Plot(label="accuracy vs bits", elem_id="curve-bits")
                path_plot = gr.Plot(label="1-D: loss along the compression direction", elem_id="path")
                with gr.Row():
                    plane_plain = gr.Plot(label="2-D landscape: AdamW", elem_id="plane-plain")
                    plane_craft = gr.Plot(label="2-D landscape: CrAFT", elem_id="plane-craft")
                gr.Markdown(PLANE_NOTE, elem_id="plane-note")
                refresh_timer = gr.Timer(1.0, active=False)

            with gr.Tab("Train", id="train"):
                gr.Markdown("Fine-tune a model with a chosen optimizer, learning rate, SAM radius ρ and epochs. With "
                            "*twin*, the same run without SAM (or with ρ = 0.05 when ρ = 0) is trained too, so Explore "
                            "can compare them. Runs are cached: the same settings never train twice.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        t_model = gr.Dropdown(["vit-tiny", "resnet-tiny"], value="vit-tiny", label="model",
                                              allow_custom_value=True, info="zoo model, or a timm name (online)")
                        t_data = gr.Dropdown(DATASETS, value="digits", label="dataset", allow_custom_value=True,
                                             elem_id="t-data",
                                             info="digits / mnist5k offline; others download (or imagefolder:PATH)")
                        t_opt = gr.Radio(["adamw", "sgd"], value="adamw", label="optimizer")
                        t_lr = gr.Textbox("", label="learning rate (empty = the optimizer's default: AdamW 1e-3, "
                                                    "SGD 0.05)", placeholder="optimizer's default", elem_id="t-lr")
                        # number boxes, not sliders: a slider's box clamps a typed -0.5 to 0 and trains that;
                        # a box keeps what was typed and the server refuses it by name
                        t_rho = gr.Number(0.05, label=f"SAM ρ (0 = no SAM; 0 to {MAX_RHO:g})", elem_id="t-rho")
                        t_adaptive = gr.Checkbox(False, label="ASAM (adaptive; use a ~10x larger ρ)")
                        t_epochs = gr.Number(3, label=f"epochs (1 to {MAX_EPOCHS})", precision=0, elem_id="t-epochs")
                        t_seed = gr.Number(0, label="seed", precision=0)
                        t_twin = gr.Checkbox(True, label="also train the twin arm")
                        t_batch = gr.Number(64, label="batch size (64 = the default)", precision=0, elem_id="t-batch")
                        t_estimate = gr.Markdown(elem_id="train-estimate")
                        t_go = gr.Button("Fine-tune", variant="primary", elem_id="train-button")
                    with gr.Column(scale=3):
                        t_status = gr.Markdown(elem_id="train-status")
                        t_open = gr.Button("Open in Explore", visible=False, elem_id="train-open")
                        t_plot = gr.Plot(label="loss per epoch", elem_id="train-plot")

                pretrain_section(cb, c["model"], tabs, DATASETS)

            supernet_view.build_tab(supernet_service)
            adapt_view.build_tab(adapt_service)
            compose_view.build_tab(compose_service)

            with gr.Tab("Learn", id="learn"):
                gr.Markdown(learn_text())

        # ---------------------------------------------------------------- events
        view = gr.State(None)  # the session's current View (model, Setting, answer): validated once
        shown = gr.State(None)  # what the refresh timer drew last for the view
        api_landscape = gr.Button(visible=False)  # carries the stateless /landscape API endpoint
        setting_inputs = [c[k] for k in ("model", "method", "sparsity", "w_bits", "a_bits", "granularity", "pattern")]
        extra_inputs = [c["recipe"], c["compensation"]]  # optional trailing inputs of /compress and /landscape
        panel_outputs = [summary, card_plain, card_craft, verdict, guide, curve_sparsity, curve_bits, c["bn"]]
        landscape_outputs = [path_plot, plane_plain, plane_craft]
        sharp_outputs = [sharp_plain, sharp_craft, sharp_note, sharp_gap, sharp_scatter]
        probe_kw = {"concurrency_limit": 1, "concurrency_id": "landscape", "show_progress": "minimal",
                    "trigger_mode": "always_last"}
        controls = [c[k] for k in ("model", "method", "sparsity", "w_bits", "a_bits", "granularity", "pattern", "bn",
                                   "recipe", "compensation")]
        changes = [x.change for x in controls]
        dep = gr.on(changes, cb.compress, inputs=[*setting_inputs, c["bn"], *extra_inputs], outputs=[answer, view],
                    api_name="compress", trigger_mode="always_last", concurrency_limit=4, show_progress="minimal",
                    preprocess=False,  # raw values reach make_setting, whose messages name the parameter
                    show_progress_on=summary)  # visible while a model's arms are fine-tuned
        # page load: one event sets the controls from the link (if any) and computes that view, so no other
        # view is shown first and no late load answer puts the default model back (craftlab_app.links)
        opened = demo.load(cb.open_link, inputs=[*controls, kind, scale],
                           outputs=[*controls, kind, scale, answer, view],
                           api_name="open_link", concurrency_limit=4, show_progress="minimal", preprocess=False,
                           show_progress_on=summary)

        def follow(first: Any, suffix: str) -> None:
            """The panels, seeds, sharpness, landscapes and link of the view `first` opened."""
            first.success(cb.panels, inputs=view, outputs=[*panel_outputs, refresh_timer], api_name="panels" + suffix,
                          show_progress="hidden", concurrency_limit=None, trigger_mode="always_last").success(
                cb.seeds, inputs=view, outputs=panel_outputs, api_name="seeds" + suffix, show_progress="hidden",
                concurrency_limit=2, trigger_mode="always_last")
            first.success(cb.sharpness, inputs=[view, sharp_measure], outputs=sharp_outputs,
                          api_name="sharpness" + suffix, show_progress="minimal", trigger_mode="always_last",
                          concurrency_limit=1, concurrency_id="sharpness")
            first.success(cb.landscape_of, inputs=[view, kind, scale], outputs=landscape_outputs,
                          api_name="landscape_view" + suffix, preprocess=False, **probe_kw)
            first.success(cb.link, inputs=[view, kind, scale], outputs=link, api_name="link" + suffix, queue=False,
                          show_progress="hidden", preprocess=False)

        follow(dep, "")
        follow(opened, "_on_load")
        sharp_measure.change(cb.sharpness, inputs=[view, sharp_measure], outputs=sharp_outputs,
                             api_name="sharp_measure", show_progress="minimal", trigger_mode="always_last",
                             concurrency_limit=1, concurrency_id="sharpness")
        gr.on([kind.change, scale.change], cb.landscape_of, inputs=[view, kind, scale], outputs=landscape_outputs,
              api_name="landscape_kind", preprocess=False, **probe_kw)
        gr.on([kind.change, scale.change], cb.link, inputs=[view, kind, scale], outputs=link, api_name="link_kind",
              queue=False, show_progress="hidden", preprocess=False)
        refresh_timer.tick(cb.refresh, inputs=[view, kind, scale, shown], preprocess=False,
                           outputs=[*panel_outputs, *landscape_outputs, refresh_timer, shown], api_name="refresh",
                           show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
        c["method"].change(cb.method_ui, inputs=[c["method"], c["pattern"], c["sparsity"]],
                           outputs=[c["sparsity"], c["pattern"]], api_name="method_ui", queue=False,
                           show_progress="hidden")
        c["pattern"].change(cb.method_ui, inputs=[c["method"], c["pattern"], c["sparsity"]],
                            outputs=[c["sparsity"], c["pattern"]], api_name="pattern_ui", queue=False,
                            show_progress="hidden")
        for key, btn in preset_buttons.items():
            btn.click(_preset_fn(cb, key), outputs=controls, api_name=f"preset_{key}", queue=False)
        export_btn.click(cb.export, inputs=[view, kind, scale], outputs=files, api_name="export", preprocess=False)
        api_landscape.click(cb.landscape, inputs=[*setting_inputs, kind, scale, *extra_inputs],
                            outputs=landscape_outputs,
                            api_name="landscape", concurrency_limit=1, concurrency_id="landscape", preprocess=False)
        status_timer.tick(cb.status, outputs=[status, status_timer], api_name="status", show_progress="hidden",
                          queue=False)
        demo.load(cb.status, outputs=[status, status_timer], api_name="status_on_load", show_progress="hidden",
                  queue=False)
        train_inputs = [t_model, t_data, t_opt, t_rho, t_adaptive, t_epochs, t_seed, t_twin, t_lr, t_batch]
        gr.on([demo.load, *[x.change for x in train_inputs]], cb.estimate, inputs=train_inputs, outputs=t_estimate,
              api_name="estimate", queue=False, show_progress="hidden", preprocess=False)
        t_go.click(cb.train, inputs=train_inputs, outputs=[t_status, t_plot, c["model"], t_open], api_name="train",
                   concurrency_limit=1, concurrency_id="train", preprocess=False,
                   trigger_mode="multiple")  # a click while a run trains is queued behind it, never dropped
        t_open.click(lambda: gr.Tabs(selected="explore"), outputs=tabs, api_name="open_in_explore", queue=False)
        # the model picker's choices (new cached runs) refresh when the tabs change; its value is never sent back,
        # so an answer computed from an older value cannot put another model back (the page-load race of issue 26)
        tabs.change(cb.model_list, inputs=c["model"], outputs=c["model"], api_name="models", show_progress="hidden")

    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.explorer = explorer  # type: ignore[attr-defined]
    demo.callbacks = cb  # type: ignore[attr-defined]
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


def seconds_since_process_start() -> float | None:
    """Seconds since this process started (Linux: /proc), so the log says how long the user waited, imports
    included; None where that cannot be read."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19]) / ticks
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def launch(host: str = "127.0.0.1", port: int = 7860, prevent_thread_lock: bool = False, **kw: Any) -> gr.Blocks:
    """Build and serve the app; returns the Blocks (blocks until interrupted unless `prevent_thread_lock`).

    Keyword arguments of :func:`build_app` (``models``, ``epochs``, ``explorer``, ``warm``, ``threads``) are
    taken from `kw`; the rest go to ``Blocks.launch``. The server starts at once; the default models are
    fine-tuned (first start only) or loaded in the background, with progress in the page and on stderr.
    """
    build_kw = {k: kw.pop(k) for k in ("models", "epochs", "explorer", "warm", "threads", "supernet_service",
                                       "adapt_service", "compose_service") if k in kw}
    t0 = time.perf_counter()
    demo = build_app(**build_kw)
    kw.setdefault("quiet", prevent_thread_lock)
    if "ssr_mode" in inspect.signature(gr.Blocks.launch).parameters:
        kw.setdefault("ssr_mode", False)  # no Node server: one process, offline
    stop = threading.Event()
    for name, value in (("css", CSS), ("head", HEAD)):  # Gradio 6 takes them at launch, older ones in Blocks
        if name in inspect.signature(demo.launch).parameters:
            kw.setdefault(name, value)
        else:
            setattr(demo, name, value)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, **kw)
    if isinstance(demo.explorer, Deferred):  # type: ignore[attr-defined]
        demo.explorer.start()  # type: ignore[attr-defined]  # torch, timm and the models: after the page is up
    if build_kw.get("warm", True):
        threading.Thread(target=_report_startup, args=(demo.explorer, stop), daemon=True).start()  # type: ignore[attr-defined]
    if not kw["quiet"]:
        since = seconds_since_process_start()
        when = (f"{since:.1f} s after the process started" if since is not None
                else f"{time.perf_counter() - t0:.1f} s after launch()")
        print(f"[craftlab app] serving on http://{host}:{port} ({when})", file=sys.stderr, flush=True)
    if prevent_thread_lock:
        return demo
    try:
        demo.block_thread()
    finally:
        stop.set()
        demo.explorer.close()  # type: ignore[attr-defined]
    return demo
