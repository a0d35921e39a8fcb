"""Benchmark: mixed-precision supernets on digits, vit-tiny (per-bit LoRA, quantized attention matmuls) and resnet-tiny
(full weights, per-subnet BatchNorm), small by default (seed 0; ``--seeds 0 1 2 3 4`` is the claims ledger's count).

Per model and seed:

* uniform PTQ of the base model (``craftlab.quantize``, W8A8/W6A6/W4A8/W4A4) and the supernet's uniform subnets,
  validation and test accuracy; for the CNN also the uniform subnets with the shared (as-trained) BatchNorm;
* the search's pick (quick search: population 12, 4 generations, on the validation split; the selection rule
  keeps the uniform subnet unless mixed ones beat it by > 2 SE held out over 5 random halves of the validation
  images) at the study's budgets: its validation and test accuracy, the held-out estimate, the most accurate
  subnet found (before the rule), and beside it the pool (every subnet the search scored in the budget: mean
  validation and test accuracy) and the mean validation − test gap of the Pareto front;
* the claim check: the pick's test accuracy against FP32, the best uniform subnet and the best uniform PTQ setting
  whose BitOPs fit the same budget (PTQ keeps the attention matmuls in float: counted at 32x32), paired by seed
  (mean difference and 95 % t CI over seeds).

BitOPs: ``craftlab.supernet.model.BITOPS_CONVENTION`` (attention matmuls included), in % of the FP32 model.
The training memory at two batch sizes is ``benchmarks/bench_supernet_memory.py``.
Run: ``python -m benchmarks.bench_supernet [--seeds 0]`` (writes benchmarks/results/supernet.md and .csv).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

import craftlab
from craftlab.analysis.stats import mean_ci
from craftlab.studies import supernet as study
from craftlab.supernet import evaluate_configs, get_supernet, load_supernet
from craftlab.supernet.model import BITOPS_CONVENTION
from craftlab.supernet.search import MARGIN_SE, SPLITS, search_budgets

RESULTS = Path(__file__).parent / "results"
MODELS = ("vit-tiny", "resnet-tiny")
SETTINGS = [(8, 8), (6, 6), (4, 8), (4, 4), (3, 4), (2, 4)]


def spec_of(model: str, seed: int):
    spec = study.notebook_specs((seed,))[f"per-bit/s{seed}"]
    return replace(spec, model=model, **({} if model.startswith("vit") else {"lora": "none"}))


def budgets_of(sn) -> list:
    """The study's quick budgets (3-6 % of FP32) where they fit; for a CNN (whose FP32 stem caps the reduction)
    four budgets between the smallest subnet and W8A8, as the app uses."""
    low, refs = sn.bitops(sn.space.smallest()), sn.references()
    if all(float(b.rstrip("%")) / 100 * refs["FP32"] >= low for b in study.QUICK["budgets"]):
        return list(study.QUICK["budgets"])
    return [low + f * (refs["W8A8"] - low) for f in (0.1, 0.25, 0.5, 0.75)]


def run_model(model: str, seed: int) -> tuple[list[dict], list[dict], float]:
    t0 = time.perf_counter()
    spec = spec_of(model, seed)
    data = craftlab.load_data(spec.data, model=craftlab.build_model(model))
    base = craftlab.load_checkpoint(craftlab.get_run(spec.base_run(), progress=False))
    sn = load_supernet(get_supernet(spec))
    refs = sn.references()
    rows = []
    for split in ("val", "test"):
        for r in study.ptq_baselines(base, data, split=split):  # float attention matmuls counted at 32x32
            rows.append({"model": model, "seed": seed, "split": split,
                         "kind": "FP32" if r["label"] == "FP32" else "uniform PTQ", "label": r["label"],
                         "accuracy": r["accuracy"], "pct": 100 * r["bitops"] / refs["FP32"]})
    cfgs = [sn.space.uniform(w, a) for w, a in SETTINGS]
    bn_modes = ("subnet", "shared") if sn.has_batchnorm() else ("subnet",)
    for split in ("val", "test"):
        for bn in bn_modes:
            kind = "uniform subnet" + (", shared BN" if bn == "shared" else "")
            for r in evaluate_configs(sn, data, cfgs, split=split, bn=bn):
                rows.append({"model": model, "seed": seed, "split": split, "kind": kind, "label": r["label"],
                             "accuracy": r["accuracy"], "pct": 100 * r["bitops"] / refs["FP32"]})
    rep = search_budgets(sn, data, budgets_of(sn), seed=seed, **study.QUICK["search"])
    configs = list({p["config"].key(): p["config"] for p in rep.points}.values())
    tests = {r["config"].key(): r["accuracy"] for r in evaluate_configs(sn, data, configs, split="test")}
    gap = sum(p["accuracy"] - tests[p["config"].key()] for p in rep.pareto) / len(rep.pareto)
    picks = []
    for r in rep.results:
        pool = [p for p in rep.points if p["bitops"] <= r.budget]  # every subnet the search scored in the budget
        pool_val = sum(p["accuracy"] for p in pool) / len(pool)
        pool_test = sum(tests[p["config"].key()] for p in pool) / len(pool)
        est = r.estimate or {}
        picks.append({"model": model, "seed": seed, "budget_pct": 100 * r.budget / refs["FP32"],
                      "pick": r.best["label"], "pick_pct": 100 * r.best["bitops"] / refs["FP32"],
                      "pick_val": r.best["accuracy"], "pick_test": tests[r.best["config"].key()],
                      "top": r.top["label"], "top_val": r.top["accuracy"], "top_test": tests[r.top["config"].key()],
                      "pool_n": len(pool), "pool_val": pool_val, "pool_test": pool_test,
                      "heldout_gain": est.get("gain", float("nan")), "heldout_se": est.get("se", float("nan")),
                      "front_gap": gap, "rule": r.rule, "n_scored": len(rep.points), "n_val": rep.args["n"]})
    return rows, picks, time.perf_counter() - t0


def _best_fitting(df: pd.DataFrame, kind: str, budget_pct: float) -> tuple[str, float]:
    part = df[(df["kind"] == kind) & (df["split"] == "test") & (df["pct"] <= budget_pct * (1 + 1e-9))]
    if not len(part):
        return "none fits", float("nan")
    val = df[(df["kind"] == kind) & (df["split"] == "val") & (df["pct"] <= budget_pct * (1 + 1e-9))]
    label = val.loc[val["accuracy"].idxmax(), "label"]  # chosen on validation, like the search
    return label, float(part[part["label"] == label]["accuracy"].iloc[0])


def _ci(diffs: list[float]) -> str:
    m, lo, hi = mean_ci([100 * d for d in diffs])
    return f"{m:+.1f}" + (f" [{lo:+.1f}, {hi:+.1f}]" if len(diffs) > 1 else "")


def _summary(r: pd.DataFrame, p: pd.DataFrame) -> list[str]:
    """Per budget, over seeds: the pick beside FP32, the best uniform subnet and uniform PTQ in the budget (paired
    by seed, mean difference [95 % t CI], pts) and the validation − test gap of the pick beside the pool's."""
    lines = ["| budget % FP32 | seeds | mixed picked | pick test % | pick − FP32 | pick − best uniform subnet in "
             "budget | pick − best uniform PTQ in budget | pick − cheapest uniform PTQ | val − test gap: pick / pool "
             "(pts) |", "|---|---|---|---|---|---|---|---|---|"]
    test = r[r["split"] == "test"]
    ptq = test[test["kind"] == "uniform PTQ"]
    cheap = ptq.groupby("label")["pct"].mean().idxmin()
    for budget, q in p.groupby(p["budget_pct"].round(2)):
        fp, us, pt, ch = [], [], [], []
        for _, row in q.iterrows():
            sub = r[r["seed"] == row["seed"]]
            fp32 = sub[(sub["kind"] == "FP32") & (sub["split"] == "test")]["accuracy"]
            fp.append(row["pick_test"] - float(fp32.iloc[0]))
            us.append(row["pick_test"] - _best_fitting(sub, "uniform subnet", row["budget_pct"])[1])
            pt.append(row["pick_test"] - _best_fitting(sub, "uniform PTQ", row["budget_pct"])[1])
            ch.append(row["pick_test"] - float(sub[(sub["kind"] == "uniform PTQ") & (sub["split"] == "test")
                                                   & (sub["label"] == cheap)]["accuracy"].iloc[0]))
        mixed = int((~q["pick"].str.match(r"^W\d+A\d+")).sum())
        ptq_cell = _ci(pt) if not any(pd.isna(pt)) else "none fits"
        pct = ptq[ptq["label"] == cheap]["pct"].mean()
        lines.append(f"| {budget:.2f} | {len(q)} | {mixed} of {len(q)} | {100 * q['pick_test'].mean():.1f} | "
                     f"{_ci(fp)} | {_ci(us)} | {ptq_cell} | {cheap} ({pct:.2f} %): {_ci(ch)} | "
                     f"{100 * (q['pick_val'] - q['pick_test']).mean():+.2f} / "
                     f"{100 * (q['pool_val'] - q['pool_test']).mean():+.2f} |")
    return lines


def report(rows: pd.DataFrame, picks: pd.DataFrame, seeds: tuple[int, ...], times: dict) -> str:
    lines = [f"Seeds: {', '.join(map(str, seeds))}. {BITOPS_CONVENTION}; in % of the FP32 model's BitOPs (FP32 "
             "counts its attention matmuls at 32x32 too; uniform PTQ keeps them float, counted at 32x32). "
             f"Selection rule: uniform unless mixed subnets beat it by > {MARGIN_SE:g} SE held out over {SPLITS} "
             "random halves of the validation images.", ""]
    for model in MODELS:
        r = rows[rows["model"] == model]
        p = picks[picks["model"] == model]
        if not len(r):
            continue
        lines += [f"**{model}** (test accuracy %, mean over seeds; validation in brackets)", "",
                  "| kind | setting | BitOPs % FP32 | test (val) accuracy % |", "|---|---|---|---|"]
        for (kind, label), part in r.groupby(["kind", "label"], sort=False):
            t, v = part[part["split"] == "test"], part[part["split"] == "val"]
            lines.append(f"| {kind} | {label} | {t['pct'].mean():.2f} | {100 * t['accuracy'].mean():.1f} "
                         f"({100 * v['accuracy'].mean():.1f}) |")
        lines += ["", f"*{model}, the pick over seeds* (differences in pts, paired by seed: mean [95 % t CI])", "",
                  *_summary(r, p)]
        lines += ["", "| budget % FP32 | seed | pick (rule) | pick BitOPs % | pick test (val) | held-out mixed − "
                  "uniform (pts ± SE) | most accurate found: test (val) | pool: mean test (val), n | best uniform "
                  "subnet in budget: test | best uniform PTQ in budget: test | front val − test gap (pts) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, q in p.iterrows():
            sub = r[r["seed"] == q["seed"]]
            ul, ua = _best_fitting(sub, "uniform subnet", q["budget_pct"])
            pl, pa = _best_fitting(sub, "uniform PTQ", q["budget_pct"])
            held = ("—" if pd.isna(q["heldout_gain"])
                    else f"{100 * q['heldout_gain']:+.1f} ± {100 * q['heldout_se']:.1f}")
            lines.append(f"| {q['budget_pct']:.2f} | {q['seed']} | {q['pick']} ({q['rule']}) | {q['pick_pct']:.2f} | "
                         f"{100 * q['pick_test']:.1f} ({100 * q['pick_val']:.1f}) | {held} | {q['top']}: "
                         f"{100 * q['top_test']:.1f} ({100 * q['top_val']:.1f}) | {100 * q['pool_test']:.1f} "
                         f"({100 * q['pool_val']:.1f}), {int(q['pool_n'])} | {ul}: {100 * ua:.1f} | "
                         f"{pl}: {100 * pa:.1f} | {100 * q['front_gap']:+.2f} |")
        lines += ["", f"({int(p['n_scored'].iloc[0])} subnets scored on {int(p['n_val'].iloc[0])} validation images "
                  f"for seed {int(p['seed'].iloc[0])}; time incl. training what the cache lacks: "
                  f"{', '.join(f'seed {s}: {t:.0f} s' for (m, s), t in times.items() if m == model)})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite supernet.md from the saved supernet.csv and supernet_picks.csv (no computation)")
    args = ap.parse_args([] if argv is None and __name__ != "__main__" else argv)
    RESULTS.mkdir(exist_ok=True)
    if args.report_only:
        rows, picks = pd.read_csv(RESULTS / "supernet.csv"), pd.read_csv(RESULTS / "supernet_picks.csv")
    else:
        out_rows, out_picks = [], []
        for model in args.models:
            for s in args.seeds:
                r, p, t = run_model(model, s)
                out_rows += r
                out_picks += [{**q, "time_s": t} for q in p]
                print(f"{model} seed {s}: {t:.0f} s", flush=True)
                rows, picks = pd.DataFrame(out_rows), pd.DataFrame(out_picks)
                rows.to_csv(RESULTS / "supernet.csv", index=False)  # saved as it goes
                picks.to_csv(RESULTS / "supernet_picks.csv", index=False)
    times = {(m, s): t for (m, s), t in picks.groupby(["model", "seed"])["time_s"].first().items()}
    text = report(rows, picks, tuple(sorted(picks["seed"].unique())), times)
    print(text)
    (RESULTS / "supernet.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
