"""The Train tab's event handlers (a mixin of :class:`~craftlab_app.callbacks.Callbacks`): fine-tune a run and
its twin (:mod:`craftlab_app.training`), pretrain a "foundation" with a chosen optimizer, SAM ρ and train-time
transform, and fine-tune an AdamW / CrAFT pair from it (:mod:`craftlab_app.pretraining`), which then opens in
Explore. Each request is validated once (a bad one is a one-line error toast, no traceback in the log) and
streams a status line and the loss curve while it trains in the background, one job at a time.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from . import panels

if TYPE_CHECKING:
    from .service import Explorer

__all__ = ["TrainCallbacks"]


def _mod(name: str) -> Any:
    return importlib.import_module(name, __package__)  # torch and plotly load after the page is served


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
    """Handlers of the Train tab (needs ``self.ex``, an Explorer)."""

    ex: Explorer

    def _stream(self, stream: Iterator[dict[str, Any]], what: str, done_text: str, on_done: Any,
                progress: Any) -> Iterator[tuple[Any, ...]]:
        """(status, loss figure, *on_done(state) or skips) per state of `stream`; a failure is said in the status,
        then raised as a one-line gr.Error."""
        figs = _mod(".figures")
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
                yield (head + "\n\n" + "\n".join(_lines(st)), figs.training_figure(st, title=f"{what}: loss per epoch"),
                       *extra)
        except Exception as err:
            msg = panels.one_line(err)
            yield (f"**Failed:** {msg}", figs.training_figure(st), *(gr.skip() for _ in range(n_extra)))
            raise gr.Error(msg, print_exception=False) from None

    # --- fine-tune a run and its twin ----------------------------------------------------------------

    @staticmethod
    def estimate(model: str, data: str, optimizer: str, rho: float, adaptive: bool, epochs: float, seed: float = 0,
                 twin: bool = True, lr: Any = None, batch_size: Any = None) -> str:
        """The estimated duration of a run request (from the cached runs of that model and data)."""
        training = _mod(".training")
        try:
            spec = training.make_run_spec(model, data, optimizer, rho, adaptive, epochs, seed, lr, batch_size)
        except ValueError as err:
            return f"⚠ {panels.one_line(err)}"
        sec = training.estimate_seconds(spec, twin=bool(twin))
        if sec is None:
            return "Estimated duration: unknown until the first epoch (no cached run of this model and data)."
        return (f"Estimated duration: about {max(1, math.ceil(sec))} s (from the cached runs of {spec.model} "
                f"on {spec.data}).")

    def train(self, model: str, data: str, optimizer: str, rho: float, adaptive: bool, epochs: float,
              seed: float = 0, twin: bool = True, lr: Any = None, batch_size: Any = None,
              progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any, Any]]:  # noqa: B008
        """Fine-tune `model` on `data` (and its plain / SAM twin), streaming a status line and the loss curve;
        on a failure the status says so (then the error toast)."""
        from .callbacks import user_errors

        with user_errors():
            spec = _mod(".training").make_run_spec(model, data, optimizer, rho, adaptive, epochs, seed, lr,
                                                   batch_size)  # the one check

        def done(st: Any) -> tuple[Any, Any]:
            if st is None:
                return (None, None)
            return gr.Dropdown(choices=self.ex.model_choices(), value=st["key"]), gr.Button(visible=True)

        yield from self._stream(self.ex.train_stream(spec, twin=bool(twin)), "fine-tuning",
                                "**Done** — open it in **Explore**.", done, progress)

    # --- pretrain, then fine-tune from it ------------------------------------------------------------

    @staticmethod
    def pretrain_check(model: str, optimizer: str, rho: float, transform: str, epochs: Any, seed: Any = 0) -> str:
        """What the pretraining request would be (its cache key), or a ⚠ line naming the problem."""
        try:
            spec = _mod(".pretraining").make_pretrain_spec(model, optimizer, rho, transform, epochs, seed)
        except ValueError as err:
            return f"⚠ {panels.one_line(err)}"
        n = f"{spec.epochs} epoch{'s' if spec.epochs != 1 else ''}"
        return (f"Pretrains **{spec.model}** on {spec.data} with **{spec.label}** for {n} "
                f"(lr {spec.lr:g}, seed {spec.seed}): `{spec.key}`.")

    def pretrain(self, model: str, optimizer: str, rho: float, transform: str, epochs: Any, seed: Any = 0,
                 progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any]]:  # noqa: B008
        """Pretrain a zoo architecture on mnist5k (streamed); when done, the run is picked as the source of the
        fine-tuning form."""
        from .callbacks import user_errors

        pre = _mod(".pretraining")
        with user_errors():
            spec = pre.make_pretrain_spec(model, optimizer, rho, transform, epochs, seed)  # the one check

        def done(st: Any) -> tuple[Any]:
            if st is None:
                return (None,)
            return (gr.Dropdown(choices=pre.pretrain_choices(), value=spec.key),)

        yield from self._stream(self.ex.pretrain_stream(spec), "pretraining",
                                "**Done** — fine-tune from it below.", done, progress)

    def transfer(self, pretrained: str, data: str, epochs: Any, seed: Any = 0, rho: Any = None,
                 progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any, Any]]:  # noqa: B008
        """Fine-tune an AdamW run and its CrAFT twin (SAM ρ = `rho`) from the pretrained run `pretrained`; when
        done, the pair is the Explore model picked."""
        from .callbacks import user_errors

        with user_errors():
            t = _mod(".pretraining").make_transfer(pretrained, data, epochs, seed)  # the one check
            stream = self.ex.transfer_stream(t, sam_rho=rho)

        def done(st: Any) -> tuple[Any, Any]:
            if st is None:
                return (None, None)
            return gr.Dropdown(choices=self.ex.model_choices(), value=st["model"]), gr.Button(visible=True)

        yield from self._stream(stream, "fine-tuning from the pretrained run",
                                "**Done** — open the pair in **Explore**.", done, progress)

    @staticmethod
    def pretrain_list(current: str | None = None) -> Any:
        """Refresh the picker of pretrained runs."""
        choices = _mod(".pretraining").pretrain_choices()
        keys = [k for _, k in choices]
        return gr.Dropdown(choices=choices, value=current if current in keys else (keys[-1] if keys else None))
