"""The supernet view's computations (issue 12; no Gradio): a BitOPs budget → the best searched subnet of the cached
mixed-precision supernet, its per-layer bits, its accuracy and its place on the Pareto front.

The supernet is the study's main one (:func:`craftlab.supernet.study.notebook_specs`: vit-tiny fine-tuned on
digits, per-bit LoRA, progressive bits, seed 0), trained once and cached by :func:`craftlab.supernet.get_supernet`
(notebook 05 and ``craftlab supernet train --preset notebook`` build the same one). Its evolutionary search (the
quick budgets of the study, evaluations cached on disk) runs once; after that a budget is a lookup: the
highest-accuracy point among every subnet the search evaluated (and the uniform ones) whose BitOPs fit the
budget — exact, and instant. Accuracies are on the validation split (what the search ranks by); the chosen
subnet's test accuracy is measured on demand and cached.

Example::

    sv = SupernetView()
    sv.prepare()                       # trains / loads the supernet and runs the search (minutes, once)
    pick = sv.choose(5.0)              # the best subnet within 5 % of the FP32 model's BitOPs
    pick["label"], pick["val_accuracy"], pick["test_accuracy"], pick["w_bits"]
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["SupernetView"]

UNIFORM = ((8, 8), (6, 6), (4, 8), (4, 6), (4, 4), (3, 4), (2, 4))
"""Uniform subnets drawn beside the front (the same supernet at one bit-width everywhere)."""


class SupernetView:
    """A cached supernet, its search and budget lookups; thread-safe; :meth:`prepare` is idempotent."""

    def __init__(self, seed: int = 0, data: str = "digits") -> None:
        self.seed, self.data_name = seed, data
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._started = False
        self.stage = "not started"
        self.error: str | None = None
        self.seconds: float | None = None
        self._test: dict[str, float] = {}

    # ------------------------------------------------------------------ preparation

    def start(self) -> None:
        """Prepare in a background thread (once); :meth:`status` follows it."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._prepare_quietly, name="craftlab-supernet", daemon=True).start()

    def _prepare_quietly(self) -> None:
        try:
            self.prepare()
        except Exception as err:  # shown in the view; the app keeps serving
            self.error = " ".join(str(err).split()) or type(err).__name__
            self.stage = "failed"

    def prepare(self) -> None:
        """Load (or train) the supernet, run the search, evaluate the uniform subnets. Idempotent."""
        if self._ready.is_set():
            return
        from craftlab.data import load_data
        from craftlab.supernet import evaluate_configs, get_supernet, load_supernet, study

        t0 = time.perf_counter()
        self.stage = "loading the data"
        data = load_data(self.data_name)
        spec = study.notebook_specs((self.seed,))[f"per-bit/s{self.seed}"]
        self.stage = "training the supernet (first time only, a few minutes; cached afterwards)"
        sn = load_supernet(get_supernet(spec))
        self.stage = "searching subnets under the study's budgets (first time only; cached afterwards)"
        _, report = study.main_search(self.seed, data, sn, quick=True)
        self.stage = "evaluating the uniform subnets"
        uniform = evaluate_configs(sn, data, [sn.space.uniform(w, a) for w, a in UNIFORM], split="val")
        with self._lock:
            self.sn, self.data, self.report, self.uniform = sn, data, report, uniform
            self.refs = sn.references()
            seen = {p["config"].key(): p for p in [*uniform, *report.points]}  # the search's score wins a tie
            self.points = sorted(seen.values(), key=lambda p: p["bitops"])  # searched and uniform subnets
            self.min_pct = 100 * self.points[0]["bitops"] / self.refs["FP32"]
        self.seconds = time.perf_counter() - t0
        self.stage = "ready"
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def status(self) -> str:
        if self.error:
            return f"**Preparing the supernet failed:** {self.error}"
        if self.ready:
            return (f"Supernet ready: {len(self.points)} subnets evaluated by the search, "
                    f"{len(self.report.pareto)} on the Pareto front.")
        return f"**Preparing:** {self.stage}…" if self._started else "Open this tab to prepare the supernet."

    # ------------------------------------------------------------------ budget lookups

    def choose(self, budget_pct: float) -> dict[str, Any]:
        """The best subnet (validation accuracy, then fewer BitOPs) among those the search evaluated, with BitOPs
        at most `budget_pct` % of the FP32 model's. ValueError naming the minimum when none fits."""
        if not self.ready:
            raise RuntimeError("the supernet is not ready yet")
        try:
            pct = float(budget_pct)
        except (TypeError, ValueError):
            raise ValueError(f"budget must be a number (% of FP32 BitOPs), got {budget_pct!r}") from None
        if not pct > 0:
            raise ValueError(f"budget must be > 0 % of FP32 BitOPs, got {budget_pct!r}")
        budget = pct / 100 * self.refs["FP32"]
        fits = [p for p in self.points if p["bitops"] <= budget]
        if not fits:
            raise ValueError(f"budget {pct:g}% of FP32 BitOPs is below every searched subnet: the smallest needs "
                             f"{self.min_pct:.2f}% ({self.points[0]['label']})")
        best = min(fits, key=lambda p: (-p["accuracy"], p["bitops"]))
        cfg = best["config"]
        return {"budget_pct": pct, "label": best["label"], "config": cfg, "val_accuracy": best["accuracy"],
                "test_accuracy": self.test_accuracy(cfg), "bitops": best["bitops"],
                "pct_fp32": 100 * best["bitops"] / self.refs["FP32"],
                "pct_w8a8": 100 * best["bitops"] / self.refs["W8A8"], "size_mb": best["size_mb"],
                "layers": list(self.sn.space.layers), "w_bits": list(cfg.w_bits), "a_bits": list(cfg.a_bits)}

    def test_accuracy(self, cfg: Any) -> float:
        """Test accuracy of the supernet set to `cfg` (cached per configuration)."""
        from craftlab.supernet import evaluate_configs

        key = cfg.key()
        if key not in self._test:
            with self._lock:  # the supernet is switched to cfg while it evaluates: one at a time
                self._test[key] = evaluate_configs(self.sn, self.data, [cfg], split="test")[0]["accuracy"]
        return self._test[key]
