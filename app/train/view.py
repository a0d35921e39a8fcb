"""The Train tab: its layout (:func:`build_tab`) and event handlers (:class:`TrainCallbacks`): fine-tune a run and
its twin, pretrain a "foundation" with a chosen optimizer, SAM ρ and train-time transform, and fine-tune an
AdamW / CrAFT pair from it (:mod:`craftlab_app.train.service`), which then opens in Explore. Each request is
validated once (a bad one is a one-line error toast, no traceback in the log) and streams a status line and the
loss curve while it trains in the background, one job at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from craftlab.data import dataset_names

from ..common.errors import LazyModule, one_line, user_errors
from .texts import INTRO, PRETRAIN_INTRO, TRANSFORM_CHOICES

__all__ = ["TrainCallbacks", "build_tab"]

_service = LazyModule(".service", __package__)  # torch loads after the page is served
_figures = LazyModule(".figures", __package__)  # plotly too


def _lines(st: dict[str, Any]) -> list[str]:
    lines = []
    for r in st["runs"]:
        state = ("cached" if r["cached"] else "done") if r["done"] else \
            (f"epoch {len(r['history'])}/{r['epochs']}" if r.get("running") else
             "queued (runs train one at a time)")
        acc = f", test accuracy {r['test_accuracy']:.1%}" if r.get("test_accuracy") is not None else ""
        lines.append(f"* `{r['key']}` ({r['label']}): {state}{acc}")
    return lines


class TrainCallbacks:
    """Handlers of the Train tab (plain methods, testable without a server).

    `service` is the tab's :class:`~craftlab_app.train.service.TrainService` (or a callable making it on first
    use, so that torch loads after the page is served); `model_choices` gives the Explore tab's model picker its
    choices once a run is done (the shell wires it: the Train tab never imports the Explore tab).

    Example::

        >>> cb = TrainCallbacks(TrainService(explorer), explorer.model_choices)  # doctest: +SKIP
        >>> cb.estimate("vit-tiny", "digits", "adamw", 0.05, False, 3)  # doctest: +SKIP
        'Estimated duration: about 12 s (from the cached runs of vit-tiny on digits).'
    """

    def __init__(self, service: Any, model_choices: Callable[[], list[tuple[str, str]]]) -> None:
        self._service, self.model_choices = service, model_choices

    @property
    def service(self) -> Any:
        """The tab's TrainService (made on first use when given as a callable)."""
        if callable(self._service) and not hasattr(self._service, "train_stream"):
            self._service = self._service()
        return self._service

    def _stream(self, stream: Iterator[dict[str, Any]], what: str, done_text: str, on_done: Any,
                progress: Any) -> Iterator[tuple[Any, ...]]:
        """(status, loss figure, *on_done(state) or skips) per state of `stream`; a failure is said in the status,
        then raised as a one-line gr.Error."""
        st: dict[str, Any] = {"runs": []}
        n_extra = len(on_done(None))
        try:
            for st in stream:
                total = sum(r["epochs"] for r in st["runs"])
                done = sum(len(r["history"]) for r in st["runs"])
                if not st["done"]:
                    progress(done / max(total, 1), desc=f"{what}: epoch {done}/{total} over {len(st['runs'])} run(s)")
                head = done_text if st["done"] else f"**{what.capitalize()}…**"
                extra = on_done(st) if st["done"] else tuple(gr.skip() for _ in range(n_extra))
                figure = _figures.training_figure(st, title=f"{what}: loss per epoch")
                yield (head + "\n\n" + "\n".join(_lines(st)), figure, *extra)
        except Exception as err:
            msg = one_line(err)
            yield (f"**Failed:** {msg}", _figures.training_figure(st), *(gr.skip() for _ in range(n_extra)))
            raise gr.Error(msg, print_exception=False) from None

    # --- fine-tune a run and its twin ----------------------------------------------------------------

    @staticmethod
    def estimate(model: str, data: str, optimizer: str, rho: float, adaptive: bool, epochs: float, seed: float = 0,
                 twin: bool = True, lr: Any = None, batch_size: Any = None) -> str:
        """The estimated duration of a run request (from the cached runs of that model and data)."""
        try:
            spec = _service.make_run_spec(model, data, optimizer, rho, adaptive, epochs, seed, lr, batch_size)
        except ValueError as err:
            return f"⚠ {one_line(err)}"
        sec = _service.estimate_seconds(spec, twin=bool(twin))
        if sec is None:
            return "Estimated duration: unknown until the first epoch (no cached run of this model and data)."
        return (f"Estimated duration: about {max(1, math.ceil(sec))} s (from the cached runs of {spec.model} "
                f"on {spec.data}).")

    def train(self, model: str, data: str, optimizer: str, rho: float, adaptive: bool, epochs: float,
              seed: float = 0, twin: bool = True, lr: Any = None, batch_size: Any = None,
              progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any, Any]]:  # noqa: B008
        """Fine-tune `model` on `data` (and its plain / SAM twin), streaming a status line and the loss curve;
        on a failure the status says so (then the error toast)."""
        with user_errors():
            spec = _service.make_run_spec(model, data, optimizer, rho, adaptive, epochs, seed, lr,
                                                   batch_size)  # the one check

        def done(st: Any) -> tuple[Any, Any]:
            if st is None:
                return (None, None)
            return gr.Dropdown(choices=self.model_choices(), value=st["key"]), gr.Button(visible=True)

        yield from self._stream(self.service.train_stream(spec, twin=bool(twin)), "fine-tuning",
                                "**Done** — open it in **Explore**.", done, progress)

    # --- pretrain, then fine-tune from it ------------------------------------------------------------

    @staticmethod
    def pretrain_check(model: str, optimizer: str, rho: float, transform: str, epochs: Any, seed: Any = 0) -> str:
        """What the pretraining request would be (its cache key), or a ⚠ line naming the problem."""
        try:
            spec = _service.make_pretrain_spec(model, optimizer, rho, transform, epochs, seed)
        except ValueError as err:
            return f"⚠ {one_line(err)}"
        n = f"{spec.epochs} epoch{'s' if spec.epochs != 1 else ''}"
        return (f"Pretrains **{spec.model}** on {spec.data} with **{spec.label}** for {n} "
                f"(lr {spec.lr:g}, seed {spec.seed}): `{spec.key}`.")

    def pretrain(self, model: str, optimizer: str, rho: float, transform: str, epochs: Any, seed: Any = 0,
                 progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any]]:  # noqa: B008
        """Pretrain a zoo architecture on mnist5k (streamed); when done, the run is picked as the source of the
        fine-tuning form."""
        pre = _service
        with user_errors():
            spec = pre.make_pretrain_spec(model, optimizer, rho, transform, epochs, seed)  # the one check

        def done(st: Any) -> tuple[Any]:
            if st is None:
                return (None,)
            return (gr.Dropdown(choices=pre.pretrain_choices(), value=spec.key),)

        yield from self._stream(self.service.pretrain_stream(spec), "pretraining",
                                "**Done** — fine-tune from it below.", done, progress)

    def transfer(self, pretrained: str, data: str, epochs: Any, seed: Any = 0, rho: Any = None,
                 progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any, Any]]:  # noqa: B008
        """Fine-tune an AdamW run and its CrAFT twin (SAM ρ = `rho`) from the pretrained run `pretrained`; when
        done, the pair is the Explore model picked."""
        with user_errors():
            t = _service.make_transfer(pretrained, data, epochs, seed)  # the one check
            stream = self.service.transfer_stream(t, sam_rho=rho)

        def done(st: Any) -> tuple[Any, Any]:
            if st is None:
                return (None, None)
            return gr.Dropdown(choices=self.model_choices(), value=st["model"]), gr.Button(visible=True)

        yield from self._stream(stream, "fine-tuning from the pretrained run",
                                "**Done** — open the pair in **Explore**.", done, progress)

    @staticmethod
    def pretrain_list(current: str | None = None) -> Any:
        """Refresh the picker of pretrained runs."""
        choices = _service.pretrain_choices()
        keys = [k for _, k in choices]
        return gr.Dropdown(choices=choices, value=current if current in keys else (keys[-1] if keys else None))


def _pretrain_section(cb: TrainCallbacks, explore_model: Any, tabs: Any, datasets: list[str]) -> None:
    """The "build your own foundation" section (issue 11), in the current Blocks context, wired: `explore_model`
    is Explore's model picker (the fine-tuned pair is picked there), `tabs` the page's tabs."""
    gr.Markdown(PRETRAIN_INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            p_model = gr.Dropdown(["vit-tiny", "resnet-tiny"], value="resnet-tiny", label="architecture",
                                  elem_id="p-model")
            p_opt = gr.Radio(["adam", "adamw", "sgd"], value="adam", label="pretraining optimizer", elem_id="p-opt")
            p_rho = gr.Number(0.0, label="SAM ρ during pretraining (0 = no SAM)", elem_id="p-rho")
            p_transform = gr.Dropdown(TRANSFORM_CHOICES, value="none", label="train-time transform",
                                      allow_custom_value=True, elem_id="p-transform",
                                      info="or a spec such as expand:rate=4")
            p_epochs = gr.Number(2, label="pretraining epochs (empty = the zoo's recipe)", precision=0,
                                 elem_id="p-epochs")
            p_seed = gr.Number(0, label="seed", precision=0, elem_id="p-seed")
            p_check = gr.Markdown(elem_id="pretrain-check")
            p_go = gr.Button("Pretrain", variant="primary", elem_id="pretrain-button")
        with gr.Column(scale=3):
            p_status = gr.Markdown(elem_id="pretrain-status")
            p_plot = gr.Plot(label="pretraining loss per epoch", elem_id="pretrain-plot")
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            f_source = gr.Dropdown([], label="pretrained run to fine-tune from", elem_id="f-source",
                                   allow_custom_value=True)
            f_data = gr.Dropdown(datasets, value="digits", label="fine-tune on (target task)", allow_custom_value=True,
                                 elem_id="f-data")
            f_epochs = gr.Number(3, label="fine-tuning epochs", precision=0, elem_id="f-epochs")
            f_seed = gr.Number(0, label="seed", precision=0, elem_id="f-seed")
            f_rho = gr.Number(0.05, label="SAM ρ of the CrAFT arm (> 0)", elem_id="f-rho")
            f_go = gr.Button("Fine-tune AdamW + CrAFT from it", variant="primary", elem_id="transfer-button")
        with gr.Column(scale=3):
            f_status = gr.Markdown(elem_id="transfer-status")
            f_open = gr.Button("Open in Explore", visible=False, elem_id="transfer-open")
            f_plot = gr.Plot(label="fine-tuning loss per epoch", elem_id="transfer-plot")

    p_inputs = [p_model, p_opt, p_rho, p_transform, p_epochs, p_seed]
    gr.on([x.change for x in p_inputs], cb.pretrain_check, inputs=p_inputs, outputs=p_check, api_name="pretrain_check",
          queue=False, show_progress="hidden", preprocess=False)
    p_go.click(cb.pretrain, inputs=p_inputs, outputs=[p_status, p_plot, f_source], api_name="pretrain",
               concurrency_limit=1, concurrency_id="train", preprocess=False, trigger_mode="multiple")
    f_go.click(cb.transfer, inputs=[f_source, f_data, f_epochs, f_seed, f_rho],
               outputs=[f_status, f_plot, explore_model, f_open], api_name="transfer", concurrency_limit=1,
               concurrency_id="train", preprocess=False, trigger_mode="multiple")
    f_open.click(lambda: gr.Tabs(selected="explore"), outputs=tabs, api_name="open_transfer_in_explore", queue=False)
    gr.on([tabs.change], cb.pretrain_list, inputs=f_source, outputs=f_source, api_name="pretrained_runs",
          queue=False, show_progress="hidden")


def build_tab(cb: TrainCallbacks, explore_model: Any, tabs: Any, page_load: Any) -> None:
    """The Train tab, in the current ``gr.Tabs`` context, wired: `explore_model` is the Explore tab's model picker
    (a run trained here is picked there), `tabs` the page's tabs (``Open in Explore``), `page_load` the page's
    load event (the duration estimate is drawn on it). Given by the shell (:mod:`craftlab_app.ui`)."""
    from .service import MAX_EPOCHS, MAX_RHO

    datasets = [d for d in dataset_names() if ":" not in d]  # the named ones (imagefolder:PATH is typed)
    with gr.Tab("Train", id="train"):
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                t_model = gr.Dropdown(["vit-tiny", "resnet-tiny"], value="vit-tiny", label="model",
                                      allow_custom_value=True, info="zoo model, or a timm name (online)")
                t_data = gr.Dropdown(datasets, value="digits", label="dataset", allow_custom_value=True,
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

        _pretrain_section(cb, explore_model, tabs, datasets)

    train_inputs = [t_model, t_data, t_opt, t_rho, t_adaptive, t_epochs, t_seed, t_twin, t_lr, t_batch]
    gr.on([page_load, *[x.change for x in train_inputs]], cb.estimate, inputs=train_inputs, outputs=t_estimate,
          api_name="estimate", queue=False, show_progress="hidden", preprocess=False)
    t_go.click(cb.train, inputs=train_inputs, outputs=[t_status, t_plot, explore_model, t_open], api_name="train",
               concurrency_limit=1, concurrency_id="train", preprocess=False,
               trigger_mode="multiple")  # a click while a run trains is queued behind it, never dropped
    t_open.click(lambda: gr.Tabs(selected="explore"), outputs=tabs, api_name="open_in_explore", queue=False)
