"""The supernet view's computations (issues 12 and 25; no Gradio): a BitOPs budget → the subnet the core's search
picks at that budget, its per-layer bits, its accuracy and its place beside the Pareto front.

The supernet is the study's main one (:func:`craftlab.studies.supernet.notebook_specs`: per-bit LoRA, progressive
bits, seed 0) built on a zoo model fine-tuned on digits: vit-tiny (the supernet notebook 05 and
``craftlab supernet train --preset notebook`` cache) or resnet-tiny (full-weight training, as LoRA needs Linear
layers; every subnet scored and exported with its own BatchNorm statistics re-estimated on the 128 calibration
images, OFA-style). :meth:`SupernetView.prepare` (once, in the background: :meth:`SupernetView.start`) loads or
trains it, runs the study's quick evolutionary search at the study's budgets, evaluates the uniform subnets and
uniform PTQ of the base model and the test accuracy of the Pareto front; those extras are cached under
``$CRAFTLAB_HOME/explore/supernet``.

A budget goes through :func:`craftlab.supernet.space.parse_budget` only (a bare number is % of the reference,
``5%``, ``120M``, ``1.2e8`` as the CLI takes them) and then to :func:`craftlab.supernet.search.evolutionary_search`:
a budget already searched is a lookup (cached per budget), any other one a short live search (the study's quick
settings; every subnet's accuracy is cached on disk by the core, so it mostly re-uses scores). The pick follows the
core's selection rule (mixed subnets must beat the best uniform one by more than 2 standard errors held out over 5
random halves of the validation images). Budgets below
the smallest subnet or above the FP32 model are refused with one message. Accuracies ranked on are validation
accuracies; test accuracies are reported beside them. BitOPs: see :data:`craftlab.supernet.model.BITOPS_CONVENTION`
(attention matmuls included).

Example::

    sv = SupernetView("vit-tiny")
    sv.prepare()                       # trains / loads the supernet and runs the search (once)
    pick = sv.choose(5.0)              # the subnet searched under 5 % of the FP32 model's BitOPs
    pick["label"], pick["val_accuracy"], pick["test_accuracy"], pick["how"]
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

__all__ = ["MODELS", "REFERENCES", "SupernetView"]

MODELS = ("vit-tiny", "resnet-tiny")
"""Models offered: the notebook's vit-tiny supernet (per-bit LoRA) and a resnet-tiny one (full weights, per-subnet
BatchNorm re-estimation; without it every subnet of a CNN supernet collapses on the shared statistics)."""
REFERENCES = ("FP32", "W8A8")
"""What a budget in % is a percentage of: the FP32 model's BitOPs, or W8A8's (searchable layers 8x8, the
patch embedding and head FP32, as the supernet keeps them)."""
COLD_NOTE = ("from an empty cache this fine-tunes the base model, trains the supernet and searches: minutes on "
             "2 CPU cores, longer on a busy machine; a cached one loads in seconds")

class SupernetView:
    """One model's cached supernet, its search, its Pareto front and budget lookups. Thread-safe;
    :meth:`prepare` is idempotent and :meth:`start` runs it once in a background thread."""

    def __init__(self, model: str = "vit-tiny", seed: int = 0, data: str = "digits") -> None:
        self.model, self.seed, self.data_name = str(model), int(seed), data
        self._lock = threading.RLock()
        self._picks: dict[str, dict[str, Any]] = {}
        self._ready = threading.Event()
        self._started = False
        self.stage, self.step = "not started", 0
        self.error: str | None = None
        self.t0: float | None = None
        self.seconds: float | None = None

    # ------------------------------------------------------------------ preparation

    def spec(self) -> Any:
        """The :class:`~craftlab.supernet.SupernetSpec` of this view's supernet (:func:`craftlab.studies.supernet.
        view_spec`)."""
        from craftlab.studies import supernet as study

        return study.view_spec(self.model, self.seed, self.data_name)

    def start(self) -> None:
        """Prepare in a background thread (once); :meth:`status` follows it."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self.t0 = time.perf_counter()
        threading.Thread(target=self._prepare_quietly, name=f"craftlab-supernet-{self.model}", daemon=True).start()

    def _prepare_quietly(self) -> None:
        try:
            self.prepare()
        except Exception as err:  # shown in the view; the app keeps serving
            self.error = " ".join(str(err).split()) or type(err).__name__
            self.stage = "failed"

    def _at(self, step: int | None) -> None:
        """Enter stage `step` (None: done), recording how long the previous stage took."""
        now = time.perf_counter()
        if getattr(self, "_stage_t0", None) is not None:
            self.stage_s[_stages()[self.step]] = now - self._stage_t0
        self._stage_t0 = now
        if step is not None:
            self.step, self.stage = step, _stages()[step]

    def prepare(self) -> None:
        """Load (or train) the supernet, search, evaluate the uniform subnets, uniform PTQ and the front's test
        accuracies: the study's recipe, :func:`craftlab.studies.supernet.prepare_view` (cached). Idempotent."""
        if self._ready.is_set():
            return
        with self._lock:
            self._started = True
            self.t0 = self.t0 or time.perf_counter()
        from craftlab.studies import supernet as study

        self.stage_s: dict[str, float] = {}
        view = study.prepare_view(self.model, self.seed, self.data_name, on_stage=self._at)
        with self._lock:
            self.front_gap = view["front_gap"]
            # uniform PTQ keeps the attention matmuls in float: study.ptq_baselines counts them at 32x32
            self.sn, self.data, self.report = view["supernet"], view["data"], view["report"]
            self.uniform, self.ptq, self.refs = view["uniform"], view["ptq"], view["references"]
            self.points, self.front, self._test = view["points"], view["front"], view["test"]
            self.smallest = view["smallest"]
            self._picks.update({_budget_key(r.budget): {"result": r, "how": "searched during preparation",
                                                        "search_s": None} for r in self.report.results})
        self._at(None)
        self.seconds = time.perf_counter() - (self.t0 or 0.0)
        self.stage = "ready"
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def started(self) -> bool:
        return self._started

    def status(self) -> str:
        """One line: not started / step k of n with the elapsed time / ready (how long it took) / failed."""
        if self.error:
            return f"**Preparing the {self.model} supernet failed:** {self.error}"
        if self.ready:
            parts = {"start-up (imports)": self.seconds - sum(self.stage_s.values()), **self.stage_s}
            took = ", ".join(f"{name} {sec:.0f} s" for name, sec in parts.items() if sec >= 0.5)
            return (f"**{self.model} supernet ready** in {self.seconds:.0f} s ({took or 'all cached'}): "
                    f"{len(self.points)} subnets scored at the study's budgets, {len(self.front)} on the Pareto "
                    "front; a budget searched before is a lookup, any other one a short live search.")
        if not self._started:
            return f"Open this tab (or pick a model) to prepare the {self.model} supernet."
        elapsed = time.perf_counter() - (self.t0 or time.perf_counter())
        return (f"**Preparing the {self.model} supernet** — step {self.step + 1} of {len(_stages())}: {self.stage}… "
                f"({elapsed:.0f} s so far; {COLD_NOTE}; each step is skipped when cached)")

    # ------------------------------------------------------------------ budget lookups

    def parse(self, budget: Any, reference: str = "FP32") -> tuple[float, float]:
        """(BitOPs, % of `reference`) of a budget through :func:`craftlab.supernet.space.parse_budget` (a bare
        number is % of `reference`). ValueError, one message, for a bad reference, a bad text, a budget above
        the FP32 model or below the smallest subnet."""
        from craftlab.supernet.space import parse_budget

        if reference not in REFERENCES:
            raise ValueError(f"budget reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        ref = self.refs[reference]
        text = str(budget).strip()
        bare = isinstance(budget, (int, float)) and not isinstance(budget, bool)
        bare = bare or re.fullmatch(r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?", text) is not None
        try:
            value = parse_budget(f"{text}%" if bare else text, ref)
        except ValueError:
            raise ValueError(f"budget {text!r} is not a budget: give a positive % of {reference} BitOPs (5 or 5%) "
                             "or BitOPs (1.2e8, 120M, 1.5G)") from None
        pct = 100 * value / ref
        if value > self.refs["FP32"] * (1 + 1e-12):
            raise ValueError(f"budget {pct:g}% of {reference} is more than the FP32 model's BitOPs: choose at most "
                             f"{100 * self.refs['FP32'] / ref:g}% of {reference}")
        if value < self.smallest["bitops"]:
            low = self.minimum_pct(reference)
            raise ValueError(f"budget {pct:g}% of {reference} BitOPs is below the smallest subnet: it needs "
                             f"{low:.2f}% of {reference} ({self.smallest['label']}); choose at least {low:.2f}%")
        return value, pct

    def minimum_pct(self, reference: str = "FP32") -> float:
        """The smallest subnet's BitOPs in % of `reference`."""
        return 100 * self.smallest["bitops"] / self.refs[reference]

    def searched(self, budget: Any, reference: str = "FP32") -> bool:
        """True when `budget` was searched already (:meth:`choose` is then a lookup)."""
        return _budget_key(self.parse(budget, reference)[0]) in self._picks

    def choose(self, budget: Any, reference: str = "FP32") -> dict[str, Any]:
        """The subnet :func:`~craftlab.supernet.search.evolutionary_search` picks under `budget` (% of `reference`
        for a bare number; ``"120M"``...): a lookup when this budget was searched, else a short live search
        (cached per budget). ValueError naming the range when the budget is out of it."""
        from craftlab.studies import supernet as study
        from craftlab.supernet.search import evolutionary_search

        if not self.ready:
            raise RuntimeError(f"the {self.model} supernet is not ready yet")
        value, pct = self.parse(budget, reference)
        key = _budget_key(value)
        with self._lock:  # the supernet is switched between subnets while searching: one at a time
            hit = self._picks.get(key)
            if hit is None:
                t0 = time.perf_counter()
                res = evolutionary_search(self.sn, self.data, value, seed=self.seed, **study.QUICK["search"])
                hit = self._picks[key] = {"result": res, "how": "searched live", "search_s": time.perf_counter() - t0}
        res = hit["result"]
        best, cfg = res.best, res.best["config"]
        return {"model": self.model, "budget_pct": pct, "reference": reference, "budget_bitops": value,
                "label": best["label"], "config": cfg, "val_accuracy": best["accuracy"],
                "test_accuracy": self.test_accuracy(cfg), "bitops": best["bitops"],
                "pct_fp32": 100 * best["bitops"] / self.refs["FP32"],
                "pct_w8a8": 100 * best["bitops"] / self.refs["W8A8"], "size_mb": best["size_mb"],
                "layers": list(self.sn.space.layers), "w_bits": list(cfg.w_bits), "a_bits": list(cfg.a_bits),
                "how": hit["how"], "search_s": hit["search_s"], "evaluated": res.evaluated, "rule": res.rule,
                "top_label": res.top["label"] if res.top else best["label"],
                "top_val_accuracy": res.top["accuracy"] if res.top else best["accuracy"],
                "front_gap": self.front_gap, "attention": bool(self.sn._attn)}

    def test_accuracy(self, cfg: Any) -> float:
        """Test accuracy of the supernet set to `cfg` (cached per configuration)."""
        from craftlab.supernet import evaluate_configs

        key = cfg.key()
        if key not in self._test:
            with self._lock:  # the supernet is switched to cfg while it evaluates: one at a time
                self._test[key] = evaluate_configs(self.sn, self.data, [cfg], split="test")[0]["accuracy"]
        return self._test[key]


def _budget_key(bitops: float) -> str:
    return f"{float(bitops):.9g}"


def _stages() -> tuple[str, ...]:
    """The steps of the preparation (the study's :data:`craftlab.studies.supernet.VIEW_STAGES`; imported when asked:
    the page is served before torch loads)."""
    from craftlab.studies.supernet import VIEW_STAGES

    return VIEW_STAGES
