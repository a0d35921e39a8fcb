"""The CraftLab Gradio app: a plain fine-tuned model and its CrAFT (SAM) twin, side by side, under
pruning and quantization — accuracy over seeds, curves, sharpness and loss landscapes, live.

This module is the shell: it builds the tabs — one package each (``explore``, ``train``, ``supernet``, ``adapt``,
``compose``, ``learn``), each with its ``service`` (no Gradio), ``view`` (layout and handlers) and ``texts`` —
and wires the few events that cross tabs (a run trained in Train is picked in Explore; the Explore model list
refreshes when the tabs change; the start-up status line). It is the one module that knows several tabs: a tab
package imports ``common/`` and ``craftlab``, never another tab.

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

from craftlab.settings import DEFAULT_SETTING, make_setting
from craftlab.threads import configure_threads

from .adapt import view as adapt_view
from .common.concurrency import Deferred
from .common.errors import user_errors
from .compose import view as compose_view
from .explore import view as explore_view
from .explore.handlers import Callbacks
from .explore.links import BITS_CHOICES, INITIAL
from .explore.panels import PRESETS
from .learn import view as learn_view
from .supernet import view as supernet_view
from .texts import CSS, HEAD, TITLE
from .train import view as train_view

if TYPE_CHECKING:
    from .explore.service import Explorer

__all__ = ["BITS_CHOICES", "App", "Callbacks", "build_app", "launch", "user_errors"]

DEFAULT_MODELS = ("vit-tiny", "resnet-tiny")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


class App(gr.Blocks):
    """The page: a ``gr.Blocks`` that also holds what tests and benchmarks reach for — the Explorer (or its
    :class:`~craftlab_app.common.concurrency.Deferred` while it is built) and the handlers of Explore and Train."""

    explorer: Any
    callbacks: Callbacks
    train_callbacks: train_view.TrainCallbacks


def _train_service(explorer: Any) -> Any:
    """The Train tab's service, on the Explorer's trainer (runs take turns across tabs); made on first use."""
    def make() -> Any:
        from .train.service import TrainService

        return TrainService(explorer)

    return make


def build_app(models: Sequence[str] | None = None, epochs: int | None = None, explorer: Explorer | None = None,
              warm: bool = True, threads: int | None = None, supernet_service: Any = None,
              adapt_service: Any = None, compose_service: Any = None) -> App:
    """The CraftLab Blocks app.

    Args:
        models: models prepared in the background at start (fine-tuned when not cached; their curve
            points computed; their extra seeds fine-tuned); the first is shown first. Default
            ``CRAFTLAB_APP_MODELS`` or vit-tiny, resnet-tiny.
        epochs: fine-tuning epochs of the zoo models' arms (default ``CRAFTLAB_APP_EPOCHS`` or 8).
        explorer: use this :class:`~craftlab_app.explore.service.Explorer` (e.g. with smaller grids, in tests).
        warm: start the background preparation (and start-up status polling).
        threads: torch intra-op threads (process-wide), by :func:`craftlab.threads.configure_threads`.
        supernet_service, adapt_service, compose_service: the Supernet, Adapt and Compose tabs' services
            (:class:`~craftlab_app.supernet.service.SupernetView`, :class:`~craftlab_app.adapt.service.AdaptView`;
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
        from .explore.service import Explorer

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
    train_cb = train_view.TrainCallbacks(_train_service(explorer), lambda: explorer.model_choices())

    with App(title="CraftLab", analytics_enabled=False) as demo:
        gr.Markdown(TITLE)
        status = gr.Markdown("starting…", elem_id="status")
        status_timer = gr.Timer(1.0, active=warm)

        with gr.Tabs(selected="explore") as tabs:
            explore_model = explore_view.build_tab(cb, choices, models[0], info, demo)
            train_view.build_tab(train_cb, explore_model, tabs, demo.load)
            supernet_view.build_tab(supernet_service)
            adapt_view.build_tab(adapt_service)
            compose_view.build_tab(compose_service)
            learn_view.build_tab()

        # ---------------------------------------------------------------- events across tabs
        status_timer.tick(cb.status, outputs=[status, status_timer], api_name="status", show_progress="hidden",
                          queue=False)
        demo.load(cb.status, outputs=[status, status_timer], api_name="status_on_load", show_progress="hidden",
                  queue=False)
        # the model picker's choices (new cached runs) refresh when the tabs change; its value is never sent back,
        # so an answer computed from an older value cannot put another model back (the page-load race of issue 26)
        tabs.change(cb.model_list, inputs=explore_model, outputs=explore_model, api_name="models",
                    show_progress="hidden")

    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.explorer, demo.callbacks, demo.train_callbacks = explorer, cb, train_cb
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


def launch(host: str = "127.0.0.1", port: int = 7860, prevent_thread_lock: bool = False, **kw: Any) -> App:
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
    if isinstance(demo.explorer, Deferred):
        demo.explorer.start()  # torch, timm and the models: after the page is up
    if build_kw.get("warm", True):
        threading.Thread(target=_report_startup, args=(demo.explorer, stop), daemon=True).start()
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
        demo.explorer.close()
    return demo
