"""The supernet view's computations (issue 12; no Gradio): a BitOPs budget → the best subnet of the cached
mixed-precision supernet, its per-layer bits, its accuracy and its place on the Pareto front.

The supernet is the study's main one (:func:`craftlab.supernet.study.notebook_specs`: per-bit LoRA, progressive
bits, seed 0) built on a zoo model fine-tuned on digits — vit-tiny by default (the very supernet notebook 05 and
``craftlab supernet train --preset notebook`` cache); a CNN (resnet-tiny) gets full-weight training, as LoRA needs
Linear layers. :meth:`SupernetView.prepare` (once, in the background: :meth:`SupernetView.start`) loads or trains
it, runs the study's quick evolutionary search (every evaluation cached on disk by the core), evaluates the
uniform subnets and uniform PTQ of the base model, and measures the test accuracy of every point of the Pareto
front; those extras are cached under ``$CRAFTLAB_HOME/explore/supernet``. After that a budget is a lookup on the
front — exact (the front holds the most accurate subnet under every budget among all those evaluated) and instant.
Accuracies ranked on are validation accuracies (what the search uses); test accuracies are reported beside them.

Example::

    sv = SupernetView("vit-tiny")
    sv.prepare()                       # trains / loads the supernet and runs the search (once; ~40 s cold)
    pick = sv.choose(5.0)              # the best subnet within 5 % of the FP32 model's BitOPs
    pick["label"], pick["val_accuracy"], pick["test_accuracy"], pick["w_bits"]
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from typing import Any

__all__ = ["MODELS", "REFERENCES", "SupernetView"]

MODELS = ("vit-tiny",)
"""Models offered by default: the notebook's vit-tiny supernet. :class:`SupernetView` also builds a CNN's
(resnet-tiny: full weights), but that one is not offered: trained by the same recipe its BatchNorm statistics are
shared by every bit-width and it collapses (largest subnet ~46 % validation accuracy against ~97 % for uniform W8A8
PTQ of its base model) — BN recalibration per subnet would be needed first."""
REFERENCES = ("FP32", "W8A8")
"""What a budget in % is a percentage of: the FP32 model's BitOPs, or W8A8's (searchable layers 8x8, the
patch embedding and head FP32, as the supernet keeps them)."""
UNIFORM = ((8, 8), (6, 6), (4, 8), (4, 6), (4, 4), (3, 4), (2, 4))
"""Uniform subnets drawn beside the front (the same supernet at one bit-width everywhere)."""
PTQ = ("W8A8", "W6A6", "W4A8", "W4A4")
STAGES = ("loading the data", "fine-tuning the base model", "training the supernet", "searching subnets",
          "uniform subnets and uniform PTQ", "test accuracy of the Pareto front")
COLD_NOTE = "about 40 s from an empty cache on 2 CPU cores for vit-tiny (a cached one loads in seconds)"


class SupernetView:
    """One model's cached supernet, its search, its Pareto front and budget lookups. Thread-safe;
    :meth:`prepare` is idempotent and :meth:`start` runs it once in a background thread."""

    def __init__(self, model: str = "vit-tiny", seed: int = 0, data: str = "digits") -> None:
        self.model, self.seed, self.data_name = str(model), int(seed), data
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._started = False
        self.stage, self.step = "not started", 0
        self.error: str | None = None
        self.t0: float | None = None
        self.seconds: float | None = None

    # ------------------------------------------------------------------ preparation

    def spec(self) -> Any:
        """The :class:`~craftlab.supernet.SupernetSpec` of this view's supernet."""
        from dataclasses import replace

        from craftlab.supernet import study

        main = study.notebook_specs((self.seed,))[f"per-bit/s{self.seed}"]
        cnn = not self.model.startswith("vit")
        return replace(main, model=self.model, data=self.data_name, **({"lora": "none"} if cnn else {}))

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

    def _at(self, step: int) -> None:
        self.step, self.stage = step, STAGES[step]

    def prepare(self) -> None:
        """Load (or train) the supernet, search, evaluate the uniform subnets, uniform PTQ and the front's test
        accuracies (cached). Idempotent."""
        if self._ready.is_set():
            return
        with self._lock:
            self._started = True
            self.t0 = self.t0 or time.perf_counter()
        from craftlab.checkpoint import load_checkpoint
        from craftlab.data import load_data
        from craftlab.models import build_model
        from craftlab.supernet import evaluate_configs, get_supernet, load_supernet, pareto_front, study
        from craftlab.train.runs import get_run

        spec = self.spec()
        self._at(0)
        data = load_data(spec.data, model=build_model(spec.model))
        self._at(1)
        base_path = get_run(spec.base_run(), progress=False)
        self._at(2)
        sn = load_supernet(get_supernet(spec))
        self._at(3)
        _, report = study.main_search(self.seed, data, sn, budgets=self._budgets(sn), quick=True)
        self._at(4)
        space = sn.space
        extras = self._load_extras(sn)
        if "uniform" not in extras:
            cfgs = [space.uniform(w, a) for w, a in UNIFORM if w in space.w_bits and a in space.a_bits]
            cfgs += [] if any(c == space.smallest() for c in cfgs) else [space.smallest()]
            extras["uniform"] = [_plain(p) for p in evaluate_configs(sn, data, cfgs, split="val")]
            base = load_checkpoint(base_path)
            extras["ptq"] = study.ptq_baselines(base, data, PTQ, split="val")
        uniform = [{**p, "config": space.validate(_config(p["config"]))} for p in extras["uniform"]]
        seen = {p["config"].key(): p for p in [*uniform, *report.points]}  # the search's own score wins a tie
        points = sorted(seen.values(), key=lambda p: (p["bitops"], -p["accuracy"]))
        front = pareto_front(points)
        self._at(5)
        test = extras.setdefault("test", {})
        todo = [p["config"] for p in front if p["config"].key() not in test]
        for row in evaluate_configs(sn, data, todo, split="test") if todo else []:
            test[row["config"].key()] = row["accuracy"]
        self._save_extras(sn, extras)
        with self._lock:
            self.sn, self.data, self.report, self.uniform, self.ptq = sn, data, report, uniform, extras["ptq"]
            self.refs = sn.references()
            self.points, self.front, self._test = points, front, test
            self.smallest = min(points, key=lambda p: p["bitops"])
        self.seconds = time.perf_counter() - (self.t0 or 0.0)
        self.stage = "ready"
        self._ready.set()

    def _budgets(self, sn: Any) -> tuple[Any, ...] | None:
        """The study's quick budgets (3-6 % of FP32) where they fit (vit-tiny: the notebook's search, cached),
        else four budgets spread between the smallest subnet and W8A8 (a CNN's FP32 stem caps its reduction)."""
        from craftlab.supernet import study

        low, refs = sn.bitops(sn.space.smallest()), sn.references()
        if all(float(b.rstrip("%")) / 100 * refs["FP32"] >= low for b in study.QUICK["budgets"]):
            return None
        return tuple(low + f * (refs["W8A8"] - low) for f in (0.1, 0.25, 0.5, 0.75))

    def _extras_path(self, sn: Any) -> Any:
        from craftlab import cache

        return cache.subdir("explore") / "supernet" / f"{self.spec().key}-{sn.fingerprint()[:16]}.json"

    def _load_extras(self, sn: Any) -> dict[str, Any]:
        try:
            return json.loads(self._extras_path(sn).read_text())
        except (OSError, ValueError):
            return {}

    def _save_extras(self, sn: Any, extras: dict[str, Any]) -> None:
        path = self._extras_path(sn)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(extras, f)
        os.replace(tmp, path)

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
            return (f"**{self.model} supernet ready** (in {self.seconds:.0f} s): {len(self.points)} subnets evaluated "
                    f"by the search, {len(self.front)} on the Pareto front; a budget is now a lookup on that front.")
        if not self._started:
            return f"Open this tab (or pick a model) to prepare the {self.model} supernet."
        elapsed = time.perf_counter() - (self.t0 or time.perf_counter())
        return (f"**Preparing the {self.model} supernet** — step {self.step + 1} of {len(STAGES)}: {self.stage}… "
                f"({elapsed:.0f} s so far; {COLD_NOTE}; each step is skipped when cached)")

    # ------------------------------------------------------------------ budget lookups

    def budget_bitops(self, budget_pct: Any, reference: str = "FP32") -> float:
        """The budget in BitOPs (ValueError naming a bad budget or reference)."""
        if reference not in REFERENCES:
            raise ValueError(f"budget reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        try:
            pct = float(budget_pct)
        except (TypeError, ValueError):
            raise ValueError(f"budget must be a number (% of {reference} BitOPs), got {budget_pct!r}") from None
        if not pct > 0:
            raise ValueError(f"budget must be > 0 % of {reference} BitOPs, got {budget_pct!r}")
        return pct / 100 * self.refs[reference]

    def minimum_pct(self, reference: str = "FP32") -> float:
        """The smallest subnet's BitOPs in % of `reference`."""
        return 100 * self.smallest["bitops"] / self.refs[reference]

    def choose(self, budget_pct: Any, reference: str = "FP32") -> dict[str, Any]:
        """The most accurate subnet (validation accuracy; ties: fewer BitOPs) of the Pareto front with BitOPs at
        most `budget_pct` % of `reference` — the best of every subnet evaluated. ValueError naming the minimum
        when none fits."""
        if not self.ready:
            raise RuntimeError(f"the {self.model} supernet is not ready yet")
        budget = self.budget_bitops(budget_pct, reference)
        pct = float(budget_pct)
        fits = [p for p in self.front if p["bitops"] <= budget]
        if not fits:
            low = self.minimum_pct(reference)
            raise ValueError(f"budget {pct:g}% of {reference} BitOPs is below the smallest subnet: it needs "
                             f"{low:.2f}% of {reference} ({self.smallest['label']}); choose at least "
                             f"{low:.2f}%")
        best = fits[-1]  # the front rises in accuracy with BitOPs
        cfg = best["config"]
        return {"model": self.model, "budget_pct": pct, "reference": reference, "budget_bitops": budget,
                "label": best["label"], "config": cfg, "val_accuracy": best["accuracy"],
                "test_accuracy": self._test[cfg.key()], "bitops": best["bitops"],
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


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able copy of an evaluated row (the configuration as a dict)."""
    return {**{k: v for k, v in row.items() if k != "config"}, "config": row["config"].to_dict()}


def _config(d: dict[str, Any]) -> Any:
    from craftlab.supernet import SubnetConfig

    return SubnetConfig.from_dict(d)
