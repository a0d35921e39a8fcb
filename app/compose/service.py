"""What the Compose tab computes (issue 20), without Gradio: tick pipeline steps, get the pipeline's accuracy over
the study's paired seeds, its size / BitOPs / costs, its paired gain over the plain compressed model, and the
waterfall from the compressed model through each ticked step.

Everything is a lookup in the composition study's table (:func:`craftlab.studies.compose.read_study`: the
benchmark's ``results/compose.csv``); without that table, a small live design (:func:`craftlab.compose`, cached
fine-tuning runs and cells) is computed once per model. Validation is the core's :meth:`Pipeline.validate`.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["COMPENSATIONS", "MODELS", "ComposeView"]

MODELS = ("resnet-tiny", "vit-tiny")
COMPENSATIONS = {"none": None, "QwT": "qwt", "QwT-v2": "qwt-v2"}


class ComposeView:
    """The Compose tab's state: one study table per model, loaded once (thread-safe)."""

    def __init__(self, table: Any = None, live_seeds: int = 2):
        self._given, self._live_seeds = table, int(live_seeds)
        self._tables: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        self._lock = threading.Lock()

    def table(self, model: str) -> Any:
        """The study's rows of `model` (the factorial cells only, BN-after-compensation kept for lookups)."""
        with self._lock:
            if model not in self._tables:
                from craftlab.studies.compose import compose, read_study

                study = self._given if self._given is not None else read_study()
                part = None if study is None else study[study["model"] == model]
                extra = read_study(design="supernet") if self._given is None else None
                if part is not None and extra is not None and (extra["model"] == model).any():
                    import pandas as pd  # the supernet design's own cells (its PTQ cells are the full design's)

                    part = pd.concat([part, extra[(extra["model"] == model) & extra["supernet"]]], ignore_index=True)
                if part is None or part.empty:
                    part = compose(model, design="full", seeds=self._live_seeds, progress=False)
                    self._sources[model] = f"a live design ({self._live_seeds} seeds, cached under CRAFTLAB_HOME)"
                else:
                    self._sources[model] = f"the composition study's table ({part['seed'].nunique()} paired seeds)"
                self._tables[model] = part.reset_index(drop=True)
            return self._tables[model]

    def answer(self, model: str, sam: bool, bn: bool, compensation: str, supernet: bool = False) -> dict[str, Any]:
        """The pipeline of the ticked steps: ``label``, ``tag``, accuracy mean/sd, the plain compressed model's,
        the paired gain with its CI, size, BitOPs (Conv/Linear; ``bitops_total`` with the attention matmuls as they
        run), parameters added, training and calibration seconds, and the waterfall table. `supernet`: the
        supernet's pick at 5 % of FP32 BitOPs replaces the fixed PTQ setting (ViTs). ValueError (the core's message)
        for a pipeline that means nothing."""
        from craftlab.analysis import factorial
        from craftlab.analysis.stats import compare_paired
        from craftlab.studies.compose import Pipeline, endpoint_setting

        if model not in MODELS:
            raise ValueError(f"model {model!r}: the composition study covers {list(MODELS)}")
        if compensation not in COMPENSATIONS:
            raise ValueError(f"compensation {compensation!r}: choose one of {list(COMPENSATIONS)}")
        comp = COMPENSATIONS[compensation]
        setting = endpoint_setting(model)
        ft = "sam" if sam else "adamw"
        pipe = (Pipeline(model, ft, None, bool(bn), comp, supernet=True) if supernet
                else Pipeline(model, ft, setting, bool(bn), comp)).validate()
        plain = Pipeline(model, "adamw", setting)
        t = self.table(model)
        rows = t[t["label"] == pipe.label].set_index("seed").sort_index()
        base = t[t["label"] == plain.label].set_index("seed").sort_index()
        seeds = rows.index.intersection(base.index)
        if not len(seeds):
            raise ValueError(f"the study has no cells of {pipe.label!r}")
        c = compare_paired(base.loc[seeds, "accuracy"], rows.loc[seeds, "accuracy"])
        order = [name for name, on in (("SAM", sam), ("BN", bn), (compensation, comp is not None),
                                       ("supernet", supernet)) if on]
        wf = factorial.waterfall(t, order) if order else None
        acc = rows.loc[seeds, "accuracy"]
        return {"model": model, "label": pipe.label, "tag": f"[{model} · {pipe.label}]", "setting": setting,
                "n": len(seeds), "accuracy": float(acc.mean()), "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "plain": float(base.loc[seeds, "accuracy"].mean()), "gain": c.mean_diff, "ci_low": c.ci_low,
                "ci_high": c.ci_high, "p": c.p, "size_mb": float(rows["size_mb"].mean()),
                "bitops": float(rows["bitops"].mean()),
                "bitops_total": float(rows["bitops_total"].mean()) if "bitops_total" in rows else float("nan"),
                "params_added": int(rows["params_added"].max()),
                "train_s": float(rows["train_s"].mean()), "calib_s": float(rows["calib_s"].mean()),
                "waterfall": wf, "order": order, "source": self._sources.get(model, "")}
