"""The composition study on both zoo models: which gains add up, which overlap, which step is not worth its cost.

Full factorial, paired by seed, at the claims ledger's compression endpoint of each model (vit-tiny
``W3A3 repq``, resnet-tiny ``W4A4``): fine-tuning {AdamW, SAM ρ=0.05} × BN re-estimation {off, on} (resnet-tiny
only) × compensation {none, QwT, QwT-v2}; fine-tuning seeds from the cache the ledger filled (``craftlab.get_run``).
The pretraining (SNT) factor and the supernet step are designs of their own (below).

Seeds by the ledger's power rule: a pilot of ``PILOT`` seeds gives each main effect's, named interaction's and the
additivity test's sd of the per-seed contrast; :func:`seeds_by_rule` asks
:func:`~craftlab.analysis.power.seeds_for_power` for 3 pp at 80 % power (planned with the sd's upper 80 % bound,
as ``bench_claims``), and the design runs the largest count, capped at ``CAP`` (and at the cached runs), never
fewer than the pilot's seeds (the pilot is part of the run). Per-step costs: every pipeline of the design timed
step by step (:func:`craftlab.studies.compose_costs.step_costs`) on ``COST_SEEDS``.

The SNT pretraining factor runs as its own design on resnet-tiny (``design="snt"``, ``results/compose_snt.csv``;
``--no-snt`` skips it); the supernet step on vit-tiny (``design="supernet"``, ``results/compose_supernet.csv``;
``--no-supernet`` skips it). Writes ``results/compose.csv`` (one row per pipeline × seed), ``results/compose_seeds.csv``
(the rule per effect)
and ``results/compose_costs.csv`` (one row per step × pipeline × cost seed) and prints the RESULTS.md section.
Run: ``python -m benchmarks.run compose`` (or ``python -m benchmarks.bench_compose [--seeds N]``: N seeds, no rule;
``--reuse-costs``: read the step timings from ``results/compose_costs.csv`` instead of measuring them).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_claims import ALPHA, MIN_SEEDS, planning_sd
from craftlab.analysis import factorial
from craftlab.analysis.power import seeds_for_power
from craftlab.analysis.stats import compare_paired
from craftlab.studies.compose import compose, design_pipelines, endpoint_setting
from craftlab.studies.compose_costs import cost_summary, step_costs

RESULTS = Path(__file__).parent / "results"
SEEDS = PILOT = 10
CAP = 30
"""The ledger's cap on seeds (``bench_claims.MAX_SEEDS``)."""
AVAILABLE = {"vit-tiny": 24, "resnet-tiny": 30}
"""Fine-tuning runs (AdamW and SAM ρ=0.05, 8 epochs) cached for the study: seeds 0..N-1."""
COST_SEEDS = (0, 1, 2)
MODELS = ("vit-tiny", "resnet-tiny")
ORDERS = {"vit-tiny": (["QwT-v2", "SAM"], ["SAM", "QwT-v2"]),
          "resnet-tiny": (["BN", "QwT-v2", "SAM"], ["SAM", "QwT-v2", "BN"])}


def _pp(v: float) -> str:
    return f"{100 * v:+.1f}"


def _ci(r: dict) -> str:
    return f"{_pp(r['mean_diff'])} [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}]"


def seeds_by_rule(pilot: pd.DataFrame, effect: float = factorial.EFFECT_OF_INTEREST) -> pd.DataFrame:
    """One row per main effect, named interaction and additivity test of a pilot design: the pilot's sd of the
    per-seed contrast and the seeds the ledger's rule asks for `effect` at 80 % power (sd planned at its upper
    80 % bound; at least the ledger's minimum, 201 meaning more than 200)."""
    res = factorial.analyze(pilot)
    rows = []
    for df in (res.main, res.interactions, res.additivity):
        for r in df.to_dict("records"):
            sd = float(r["sd_diff"]) if np.isfinite(r["sd_diff"]) else 0.0
            need = seeds_for_power(effect, max(planning_sd(sd, int(r["n"])), 1e-9), ALPHA, 0.8, min_n=MIN_SEEDS,
                                   max_n=200)
            rows.append({"kind": r["kind"], "step": r["step"], "pilot_n": int(r["n"]), "pilot_sd": sd,
                         "needed": need})
    return pd.DataFrame(rows)


def design_seeds(rule: pd.DataFrame, model: str) -> int:
    """The design's seed count: the largest the rule asks, capped at ``CAP`` and the cached runs, never fewer
    than the pilot's seeds."""
    return int(max(min(int(rule["needed"].max()), CAP, AVAILABLE[model]), int(rule["pilot_n"].max())))


def measure_costs(model: str, seeds=COST_SEEDS) -> pd.DataFrame:
    """Every pipeline of the full design timed step by step on `seeds` (one row per step)."""
    out = []
    for seed in seeds:
        for p in design_pipelines(model, "full"):
            load = os.getloadavg()[0]
            t = step_costs(p, seed)
            out.append(t.assign(pipeline_s=t.attrs["pipeline_s"], load_1m=load))
    return pd.concat(out, ignore_index=True)


def _fmt_s(v: float) -> str:
    return f"{v:.2f} s" if v < 10 else f"{v:.0f} s"


def step_cost_lines(model: str, t: pd.DataFrame, costs: pd.DataFrame) -> tuple[list[str], dict[str, dict]]:
    """The per-step cost table (median over pipelines × cost seeds) and each waterfall step's cost."""
    tabs = [g.drop(columns="pipeline_s") for _, g in costs.groupby(["label", "seed"], sort=False)]
    summ = cost_summary(tabs)
    tr = t.groupby("sam")["train_s"].median()
    seeds = costs["seed"].nunique()
    out = [f"Per-step cost ({model}; every pipeline of the design timed step by step on {seeds} seeds, median; "
           "each step's size/BitOPs effect is the change it makes; fine-tuning from the cached runs' records):", "",
           "| step | method | median s | runs | size MB after | Δ size MB | Δ BitOPs (M) | Δ parameters |",
           "|---|---|---|---|---|---|---|---|",
           f"| fine-tuning | AdamW | {tr[False]:.1f} | {t[~t['sam']]['seed'].nunique()} | | | | |",
           f"| fine-tuning | SAM ρ=0.05 | {tr[True]:.1f} | {t[t['sam']]['seed'].nunique()} | | | | |"]
    for r in summ.to_dict("records"):
        out.append(f"| {r['step']} | {r['method']} | {r['seconds']:.2f} | {r['runs']} | {r['size_mb']:.3f} | "
                   f"{r['d_size_mb']:+.3f} | {r['d_bitops'] / 1e6:+.1f} | {r['d_params']:+.0f} |")
    per = costs.groupby(["label", "seed"], sort=False).agg(steps=("seconds", "sum"), chain=("pipeline_s", "first"))
    out += ["", f"Check: the steps' seconds sum to each pipeline's chain time (largest gap "
                f"{(per['chain'] - per['steps']).abs().max() * 1000:.1f} ms over {len(per)} timed pipelines)."]
    cost = {"SAM": {"seconds": float(tr[True] - tr[False]), "what": "fine-tuning", "d_params": 0.0,
                    "d_bitops": 0.0}}
    for r in summ.to_dict("records"):
        name = {"BN re-estimation": "BN", "compensation fit": r["method"]}.get(r["step"])
        if name:
            cost[name] = {"seconds": float(r["seconds"]), "what": "calibration", "d_params": float(r["d_params"]),
                          "d_bitops": float(r["d_bitops"])}
    return out, cost


def waterfall_reading(w: pd.DataFrame, cost: dict[str, dict]) -> tuple[str, list[str]]:
    """A waterfall with each increment's cost, and the steps not worth their cost in that order (increment not
    significantly > 0, computed)."""
    parts, bad = [], []
    for r in w.iloc[1:].to_dict("records"):
        c = cost.get(r["step"], {})
        price = (f"{_fmt_s(c['seconds'])} more {c['what']}" + (f", {c['d_params']:+.0f} parameters, "
                                                                f"{c['d_bitops'] / 1e6:+.0f} M BitOPs"
                                                                if c["d_params"] or c["d_bitops"] else "")
                 if c else "cost not measured")
        parts.append(f"→ + {r['step']} {_ci(r)} = {100 * r['level']:.1f} % ({price})")
        if not (r["p"] < 0.05 and r["mean_diff"] > 0):
            harm = " — it HARMS (significantly < 0)" if r["p"] < 0.05 else ""
            bad.append(f"{r['step']} ({_ci(r)} pp for {price}{harm})")
    return f"compressed {100 * w.iloc[0]['level']:.1f} % " + " ".join(parts), bad


def rule_lines(model: str, rule: pd.DataFrame, res: factorial.FactorialResult, n: int) -> list[str]:
    """Seeds needed (the rule, from the pilot) vs used, per effect, with the power note where the cap binds."""
    final = pd.concat([res.main, res.interactions, res.additivity], ignore_index=True).set_index(["kind", "step"])
    out = [f"Seeds by the ledger's power rule (3 pp at 80 % power, α = {ALPHA}, from the {int(rule['pilot_n'].max())}"
           f"-seed pilot's sd planned at its upper 80 % bound; cap {CAP}, {AVAILABLE[model]} cached runs): the design "
           f"uses {n} seeds, the largest count any effect asks (capped), never fewer than the pilot's.", "",
           "| effect | pilot sd of the contrast (pp) | seeds needed | seeds used | power note |",
           "|---|---|---|---|---|"]
    for r in rule.to_dict("records"):
        f = final.loc[(r["kind"], r["step"])] if (r["kind"], r["step"]) in final.index else None
        need = "> 200" if r["needed"] > 200 else str(r["needed"])
        if r["needed"] <= n:
            note = "≥ 80 % at 3 pp (planned)"
        elif f is not None and np.isfinite(f["detectable"]):
            note = (f"**capped**: {n} seeds find ±{100 * f['detectable']:.1f} pp with 80 % power (this run's sd), "
                    "not 3 pp")
        else:
            note = "**capped**"
        out.append(f"| {r['kind']} {r['step']} | {100 * r['pilot_sd']:.1f} | {need} | {n} | {note} |")
    return out + [""]


def section(model: str, t: pd.DataFrame, rule: pd.DataFrame | None = None,
            costs: pd.DataFrame | None = None) -> list[str]:
    res = factorial.analyze(t)
    n = t["seed"].nunique()
    out = [f"### {model} — {endpoint_setting(model)}, full design, {n} paired seeds", ""]
    if rule is not None:
        out += rule_lines(model, rule, res, n)
    step_s = (costs.groupby("label", sort=False)["pipeline_s"].median() if costs is not None
              else pd.Series(dtype=float))
    out += ["| pipeline | accuracy % | size MB | BitOPs (M) | params added | train s | steps s |",
            "|---|---|---|---|---|---|---|"]
    cells = t.groupby("label", sort=False)[["accuracy", "size_mb", "bitops", "params_added", "train_s",
                                            "calib_s"]].mean()
    for label, r in cells.iterrows():
        out.append(f"| {label} | {100 * r['accuracy']:.1f} | {r['size_mb']:.3f} | {r['bitops'] / 1e6:.0f} | "
                   f"{r['params_added']:.0f} | {r['train_s']:.1f} | "
                   + (f"{step_s[label]:.2f} |" if label in step_s else "n/a |"))
    out += ["", "Steps s: compression → BN → compensation → evaluation of the test images, timed step by step "
                "(median over the cost seeds; the per-step table below splits it)." if len(step_s) else
            "Steps s: not measured in this run."]
    cost: dict[str, dict] = {}
    if costs is not None:
        lines, cost = step_cost_lines(model, t, costs)
        out += [""] + lines
    out += ["", "Main effects (on − off, averaged over the other steps; pp, 95 % CI, paired t): " + "; ".join(
        f"{r['step']} {_ci(r)}, p = {r['p']:.2g}" for r in res.main.to_dict("records")) + "."]
    out += ["", "Two-way interactions (Holm over the family; negative = the gains overlap): " + "; ".join(
        f"{r['step']} {_ci(r)}, Holm p = {r['p_adj']:.2g} → **{r['word']}**" + (
            f" (finds ±{100 * r['detectable']:.1f} pp with 80 % power" + (
                "; seeds: the rule's table above)" if rule is not None else
                f"; 3 pp needs {factorial._seeds(r['seeds_for_3pp'])} seeds)")
            if r["word"] == "inconclusive" else "")
        for r in res.interactions.to_dict("records")) + "."]
    for r in res.additivity.to_dict("records"):
        out += ["", f"Additivity ({r['step']}): the full pipeline gains {_pp(r['full_gain'])} pp over the plain "
                    f"compressed model, the parts alone sum to {_pp(r['sum_of_parts'])} pp; observed − sum "
                    f"{_ci(r)}, p = {r['p']:.2g} → **{r['word']}**."]
    for order in ORDERS[model]:
        text, bad = waterfall_reading(factorial.waterfall(t, order), cost)
        out += ["", f"Waterfall ({' → '.join(order)}): {text}. " + (
            "Not worth its cost in this order (increment not significantly > 0, computed): " + "; ".join(bad) + "."
            if bad else "Every step of this order pays (each increment significantly > 0).")]
    if "bn_last" in t and t["bn_last"].any():  # the order of BN re-estimation and compensation
        parts = []
        for sam in (False, True):
            for comp in ("qwt", "qwt-v2"):
                sel = t[(t["sam"] == sam) & t["bn"] & (t["compensation"] == comp)]
                w = sel.pivot_table(index="seed", columns="bn_last", values="accuracy").dropna()
                c = compare_paired(w[False], w[True])
                arm = "SAM" if sam else "AdamW"
                parts.append(f"{arm} + {comp}: BN before {100 * c.baseline_mean:.1f} % → BN after "
                             f"{100 * c.treatment_mean:.1f} % ({_pp(c.mean_diff)} [{_pp(c.ci_low)}, "
                             f"{_pp(c.ci_high)}], p = {c.p:.2g})")
        out += ["", "Order of BN re-estimation and compensation (the ledger's protocol re-estimates BN *before* "
                    "compensating; the other order re-estimates it after; paired, outside the factorial): "
                + "; ".join(parts) + "."]
    # the practical question: each step's gain when it is added last (every other step already on), in the full
    # pipeline with each compensation
    cnn = bool(t["bn"].any())
    sam_t = t[t["sam"]]["train_s"].mean() / t[~t["sam"]]["train_s"].mean()
    costs_txt = {"SAM": f"×{sam_t:.1f} fine-tuning time"}
    for k, c in cost.items():
        if k != "SAM":
            costs_txt[k] = (f"{_fmt_s(c['seconds'])} calibration (median, timed alone), {c['d_params']:+.0f} "
                            f"parameters, {c['d_bitops'] / 1e6:+.0f} M BitOPs")
    worth, useless, harms = [], [], []
    for comp in ("QwT", "QwT-v2"):
        c = t[t["compensation"] == comp.lower()]
        costs_txt.setdefault(comp, f"+{c['params_added'].mean():.0f} parameters ({c['size_mb'].mean():.3f} MB vs "
                                   f"{cells.iloc[0]['size_mb']:.3f} MB)")
        steps = (["BN"] if cnn else []) + [comp, "SAM"]
        part = []
        for s_ in steps:
            r = factorial.waterfall(t, [x for x in steps if x != s_] + [s_]).iloc[-1]
            part.append(f"{s_} {_ci(r)}, p = {r['p']:.2g}")
            if r["p"] < 0.05 and r["mean_diff"] < 0:
                harms.append(f"{s_} (in the pipeline with {comp}: {_ci(r)} pp)")
            elif not (r["p"] < 0.05 and r["mean_diff"] > 0):
                useless.append(f"{s_} (in the pipeline with {comp}: {_ci(r)} pp)")
        worth.append(f"with {comp} ({' + '.join(steps)}): " + "; ".join(part))
    out += ["", "Each step added last (every other step of the full pipeline already on, pp): " + " — ".join(worth)
            + ". Costs: " + "; ".join(f"{k}: {v}" for k, v in costs_txt.items()) + "."]
    acc = t.groupby("label", sort=False)["accuracy"].mean().sort_values(ascending=False)
    best = t[t["label"] == acc.index[0]][["params_added", "train_s"]].mean()
    out += ["", f"Best pipeline of the design: {acc.index[0]} ({100 * acc.iloc[0]:.1f} %, "
                f"+{best['params_added']:.0f} parameters, fine-tuning {best['train_s']:.0f} s); runner-up "
                f"{acc.index[1]} ({100 * acc.iloc[1]:.1f} %)."]
    words = res.interactions.groupby("word")["step"].apply(list).to_dict() if len(res.interactions) else {}
    reading = [f"{k}: {', '.join(v)}" for k, v in sorted(words.items())]
    out += ["", f"**Reading ({model}).** Pairs — " + "; ".join(reading) + ". "
            + ("Not worth its cost once the others are on (gain added last not significantly > 0): "
               + "; ".join(useless) + "." if useless else
               "Every step still pays when added last (significant gain).")
            + (" HARMS once the others are on (significantly < 0 added last): " + "; ".join(harms) + "."
               if harms else "")]
    return out


def _pretrain_seconds(seeds: list[int]) -> dict[str, float]:
    """Median recorded pretraining time of the SNT arms (Adam, repvgg) over `seeds` (cached runs' metadata)."""
    from craftlab.checkpoint import read_meta
    from craftlab.studies.snt import snt_arms
    from craftlab.train.pretrain import get_pretrain
    from craftlab.train.pretrain_runs import PretrainSpec

    arms = snt_arms("resnet-tiny")
    return {arm: float(np.median([read_meta(get_pretrain(PretrainSpec("resnet-tiny", optimizer="adam", seed=s,
                                                                      **arms[arm]), progress=False))
                                  ["metrics"]["train_time_s"] for s in seeds])) for arm in ("Adam", "repvgg")}


def effect_lines(res: factorial.FactorialResult) -> list[str]:
    """A design's main effects and its two-way interactions (Holm family), each with its CI and word."""
    return ["", "Main effects (pp, 95 % CI, paired t): " + "; ".join(
        f"{r['step']} {_ci(r)}, p = {r['p']:.2g}" for r in res.main.to_dict("records")) + ".",
            "", "Two-way interactions (Holm over the family): " + "; ".join(
        f"{r['step']} {_ci(r)}, Holm p = {r['p_adj']:.2g} → **{r['word']}**" + (
            f" (finds ±{100 * r['detectable']:.1f} pp with 80 % power)" if r["word"] == "inconclusive" else "")
        for r in res.interactions.to_dict("records")) + "."]


def snt_section(t: pd.DataFrame, rule: pd.DataFrame, step_cost: dict[str, dict] | None = None) -> list[str]:
    """The SNT pretraining factor on resnet-tiny (design 'snt'): cells, the rule's seeds, effects, interactions,
    additivity and a waterfall with each step's cost."""
    res = factorial.analyze(t)
    n = t["seed"].nunique()
    pre = _pretrain_seconds(sorted(t["seed"].unique().tolist()))
    out = [f"### resnet-tiny — the SNT pretraining factor, {endpoint_setting('resnet-tiny')}, design 'snt', {n} "
           "paired seeds", "",
           "Pretraining {Adam, repvgg} (the SNT study's per-seed mnist5k runs, the ones the ledger's SNT rows score) "
           "× fine-tuning {AdamW, SAM ρ=0.05} (`get_transfer`: digits, 8 epochs) × BN re-estimation {off, on} × "
           "compensation {none, QwT-v2}: a fraction of the full design (QwT and the other BN order left out). "
           "Its AdamW arm is not the zoo runs' (another pretraining per seed), so its numbers are not the tables "
           "above. Calibration steps' costs: the per-step table of the main resnet-tiny design.", ""]
    out += rule_lines("resnet-tiny", rule, res, n)
    out += ["| pipeline | accuracy % | fine-tuning s |", "|---|---|---|"]
    cells = t.groupby("label", sort=False)[["accuracy", "train_s"]].mean()
    out += [f"| {label} | {100 * r['accuracy']:.1f} | {r['train_s']:.1f} |" for label, r in cells.iterrows()]
    out += effect_lines(res)
    for r in res.additivity.to_dict("records"):
        out += ["", f"Additivity ({r['step']}): full gain {_pp(r['full_gain'])} pp, parts alone "
                    f"{_pp(r['sum_of_parts'])} pp; observed − sum {_ci(r)}, p = {r['p']:.2g} → **{r['word']}**."]
    tr = t.groupby("sam")["train_s"].median()
    cost = {**(step_cost or {}),  # the calibration steps' costs, timed on the main design's resnet-tiny runs
            "SNT": {"seconds": pre["repvgg"] - pre["Adam"], "what": "pretraining", "d_params": 0.0, "d_bitops": 0.0},
            "SAM": {"seconds": float(tr[True] - tr[False]), "what": "fine-tuning", "d_params": 0.0, "d_bitops": 0.0}}
    for order in (["SNT", "SAM", "QwT-v2"], ["SAM", "QwT-v2", "SNT"]):
        text, bad = waterfall_reading(factorial.waterfall(t, order), cost)
        out += ["", f"Waterfall ({' → '.join(order)}): {text}. " + (
            "Not worth its cost in this order (increment not significantly > 0, computed): " + "; ".join(bad) + "."
            if bad else "Every step of this order pays.")]
    out += ["", f"Pretraining time (recorded, median over the seeds): Adam {pre['Adam']:.0f} s, repvgg "
                f"{pre['repvgg']:.0f} s (folded back after training: same deployed model size)."]
    return out


def supernet_section(t: pd.DataFrame, rule: pd.DataFrame) -> list[str]:
    """The supernet step on vit-tiny (design 'supernet'): cells with both BitOPs counts, effects, the SAM ×
    supernet interaction and the waterfalls in both orders, each step with its cost."""
    res = factorial.analyze(t)
    n = t["seed"].nunique()
    out = [f"### vit-tiny — the supernet step, design 'supernet', {n} paired seeds", "",
           f"Fine-tuning {{AdamW, SAM ρ=0.05}} × the last step {{{endpoint_setting('vit-tiny')} PTQ, PTQ + QwT-v2, the "
           "supernet's pick at 5 % of the FP32 BitOPs}: the study's main supernet (per-bit LoRA) trained on the same "
           "seed's fine-tuned run, the pick of the supernet benchmark's search (the AdamW pick is its number). "
           "The two BitOPs columns: Conv/Linear layers only (`model_stats`), and with the attention matmuls as the "
           "model runs them (float after PTQ, at the subnet's activation bits after the supernet step; the "
           "supernet keeps the patch embedding and head in FP32, PTQ quantizes them).", ""]
    out += rule_lines("vit-tiny", rule, res, n)
    out += ["| pipeline | accuracy % | BitOPs Conv/Linear (M) | BitOPs with attention (M) | fine-tuning + supernet "
            "s | search or calibration s | the pick (seed 0) |", "|---|---|---|---|---|---|---|"]
    cells = t.groupby("label", sort=False)[["accuracy", "bitops", "bitops_total", "train_s", "calib_s"]].mean()
    first = t[t["seed"] == t["seed"].min()].set_index("label")["setting"]
    out += [f"| {label} | {100 * r['accuracy']:.1f} | {r['bitops'] / 1e6:.1f} | {r['bitops_total'] / 1e6:.1f} | "
            f"{r['train_s']:.0f} | {r['calib_s']:.1f} | {first.get(label, '')} |" for label, r in cells.iterrows()]
    out += effect_lines(res)
    tr = t[~t["supernet"]].groupby("sam")["train_s"].median()
    sn = t[t["supernet"]]
    ptq = t[~t["supernet"] & (t["compensation"] == "none")]
    cost = {"SAM": {"seconds": float(tr[True] - tr[False]), "what": "fine-tuning", "d_params": 0.0, "d_bitops": 0.0},
            "supernet": {"seconds": float((sn["train_s"] - sn["seed"].map(ptq.groupby("seed")["train_s"].first()))
                                          .median() + sn["calib_s"].median()),
                         "what": "supernet training and search", "d_params": 0.0,
                         "d_bitops": float(sn["bitops"].mean() - ptq["bitops"].mean())}}
    for order in (["SAM", "supernet"], ["supernet", "SAM"]):
        text, bad = waterfall_reading(factorial.waterfall(t, order), cost)
        out += ["", f"Waterfall ({' → '.join(order)}): {text}. " + (
            "Not worth its cost in this order (increment not significantly > 0, computed): " + "; ".join(bad) + "."
            if bad else "Every step of this order pays.")]
    ratio = sn["bitops_total"].mean() / ptq["bitops_total"].mean()
    out += ["", f"Cost of the supernet step in BitOPs: {sn['bitops'].mean() / ptq['bitops'].mean():.2f}× the PTQ "
                f"setting's Conv/Linear BitOPs (FP32 first and last layers, wider activations), {ratio:.2f}× its "
                "BitOPs with the attention matmuls as they run (PTQ leaves them in float)."]
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    argv = list(argv or [])
    fixed = int(argv[argv.index("--seeds") + 1]) if "--seeds" in argv else None
    cost_csv = RESULTS / "compose_costs.csv"
    reuse = pd.read_csv(cost_csv) if "--reuse-costs" in argv and cost_csv.is_file() else None
    tables, lines, walls, rules, all_costs = [], [], {}, [], []
    for model in MODELS:
        t0 = time.perf_counter()
        rule = None
        if fixed is None:
            rule = seeds_by_rule(compose(model, "full", PILOT, budget=10_000))
            rules.append(rule.assign(model=model))
        n = fixed if fixed is not None else design_seeds(rule, model)
        t = compose(model, "full", n, budget=10_000)
        walls[model] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if reuse is not None:
            costs = reuse[reuse["model"] == model]
        else:
            costs = measure_costs(model)
            walls[model + " costs"] = time.perf_counter() - t1
        all_costs.append(costs)
        tables.append(t)
        lines += section(model, t, rule, costs) + [""]
    def side_design(model: str, design: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """A design of its own (seeds by the rule unless --seeds), timed, its table in compose_<design>.csv."""
        t0 = time.perf_counter()
        rule = seeds_by_rule(compose(model, design, fixed or PILOT, budget=10_000))
        rules.append(rule.assign(model=f"{model} ({design})"))
        t = compose(model, design, fixed or design_seeds(rule, model), budget=10_000)
        walls[f"{model} {design}"] = time.perf_counter() - t0
        t.to_csv(RESULTS / f"compose_{design}.csv", index=False)
        return t, rule

    if "--no-snt" not in argv:  # the SNT pretraining factor on resnet-tiny (design 'snt')
        t, rule = side_design("resnet-tiny", "snt")
        resnet = MODELS.index("resnet-tiny")
        lines += snt_section(t, rule, step_cost_lines("resnet-tiny", tables[resnet], all_costs[resnet])[1]) + [""]
    if "--no-supernet" not in argv:  # the supernet step on vit-tiny (design 'supernet')
        lines += supernet_section(*side_design("vit-tiny", "supernet")) + [""]
    df = pd.concat(tables, ignore_index=True)
    df.to_csv(RESULTS / "compose.csv", index=False)
    costs_df = pd.concat(all_costs, ignore_index=True)
    costs_df.to_csv(RESULTS / "compose_costs.csv", index=False)
    if rules:
        pd.concat(rules, ignore_index=True).to_csv(RESULTS / "compose_seeds.csv", index=False)
    how = (f"seeds by the ledger's power rule from a {PILOT}-seed pilot (per model below; capped at {CAP})"
           if fixed is None else f"{fixed} fine-tuning seeds (0..N-1) per model, fixed by --seeds (no power rule)")
    head = [f"Design: full factorial at each model's claims-ledger compression endpoint, {how}, paired by seed "
            "(every pipeline compresses the same cached AdamW / SAM ρ=0.05 run). BN re-estimation follows the "
            "ledger's protocol (after the whole compression, quantizers on, before compensation). The SNT pretraining "
            "factor is its own design on resnet-tiny, the supernet step its own on vit-tiny (last subsections). "
            "Train s: the cached run's fine-tuning time. "
            "Per-step costs are wall times on a shared 2-core "
            f"machine: medians over {len(COST_SEEDS)} seeds × every pipeline, comparable within this run only"
            + (f" (1-min load average while timing: median {costs_df['load_1m'].median():.1f}, range "
               f"{costs_df['load_1m'].min():.1f}-{costs_df['load_1m'].max():.1f})" if "load_1m" in costs_df else "")
            + ". "
            + "; ".join(f"{m}: {w:.0f} s" for m, w in walls.items()) + " this run (accuracy cells cached under "
            "`$CRAFTLAB_HOME/compose`; " + ("the step timings read from `results/compose_costs.csv`, measured by an "
                                            "earlier run of this benchmark without --reuse-costs)." if reuse is not None
                                            else "the step timings are measured afresh)."), ""]
    print("\n".join(head + lines).rstrip())
    return df


if __name__ == "__main__":
    main(sys.argv[1:])
