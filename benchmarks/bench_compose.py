"""The composition study on both zoo models: which gains add up, which overlap, which step is not worth its cost.

Full factorial, paired by seed, at the claims ledger's compression endpoint of each model (vit-tiny
``W3A3 repq``, resnet-tiny ``W4A4``): fine-tuning {AdamW, SAM ρ=0.05} × BN re-estimation {off, on} (resnet-tiny
only) × compensation {none, QwT, QwT-v2}; ``SEEDS`` fine-tuning seeds from the cache the ledger filled
(``craftlab.get_run``). The pretraining (SNT) and supernet steps are designed but not run here.

Writes ``results/compose.csv`` (one row per pipeline × seed) and prints the RESULTS.md section.
Run: ``python -m benchmarks.run compose`` (or ``python -m benchmarks.bench_compose [--seeds N]``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from craftlab.analysis import factorial
from craftlab.analysis.compose import compose, endpoint_setting
from craftlab.analysis.stats import compare_paired

RESULTS = Path(__file__).parent / "results"
SEEDS = 10
MODELS = ("vit-tiny", "resnet-tiny")
ORDERS = {"vit-tiny": (["QwT-v2", "SAM"], ["SAM", "QwT-v2"]),
          "resnet-tiny": (["BN", "QwT-v2", "SAM"], ["SAM", "QwT-v2", "BN"])}


def _pp(v: float) -> str:
    return f"{100 * v:+.1f}"


def _ci(r: dict) -> str:
    return f"{_pp(r['mean_diff'])} [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}]"


def section(model: str, t: pd.DataFrame) -> list[str]:
    res = factorial.analyze(t)
    n = t["seed"].nunique()
    out = [f"### {model} — {endpoint_setting(model)}, full design, {n} paired seeds", "",
           "| pipeline | accuracy % | size MB | params added | train s | calib s |", "|---|---|---|---|---|---|"]
    cells = t.groupby("label", sort=False)[["accuracy", "size_mb", "params_added", "train_s", "calib_s"]].mean()
    for label, r in cells.iterrows():
        out.append(f"| {label} | {100 * r['accuracy']:.1f} | {r['size_mb']:.3f} | {r['params_added']:.0f} | "
                   f"{r['train_s']:.1f} | {r['calib_s']:.2f} |")
    out += ["", "Main effects (on − off, averaged over the other steps; pp, 95 % CI, paired t): " + "; ".join(
        f"{r['step']} {_ci(r)}, p = {r['p']:.2g}" for r in res.main.to_dict("records")) + "."]
    out += ["", "Two-way interactions (Holm over the family; negative = the gains overlap): " + "; ".join(
        f"{r['step']} {_ci(r)}, Holm p = {r['p_adj']:.2g} → **{r['word']}**" + (
            f" (finds ±{100 * r['detectable']:.1f} pp with 80 % power; 3 pp needs "
            f"{factorial._seeds(r['seeds_for_3pp'])} seeds)" if r["word"] == "inconclusive" else "")
        for r in res.interactions.to_dict("records")) + "."]
    for r in res.additivity.to_dict("records"):
        out += ["", f"Additivity ({r['step']}): the full pipeline gains {_pp(r['full_gain'])} pp over the plain "
                    f"compressed model, the parts alone sum to {_pp(r['sum_of_parts'])} pp; observed − sum "
                    f"{_ci(r)}, p = {r['p']:.2g} → **{r['word']}**."]
    for order in ORDERS[model]:
        w = factorial.waterfall(t, order)
        out += ["", f"Waterfall ({' → '.join(order)}): compressed {100 * w.iloc[0]['level']:.1f} % " + " ".join(
            f"→ + {r['step']} {_ci(r)} = {100 * r['level']:.1f} %" for r in w.iloc[1:].to_dict("records")) + "."]
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
    costs = {"SAM": f"×{sam_t:.1f} fine-tuning time"}
    if cnn:
        costs["BN"] = f"{t[t['bn'] & (t['compensation'] == 'none')]['calib_s'].mean():.2f} s calibration, no parameters"
    worth, useless, harms = [], [], []
    for comp in ("QwT", "QwT-v2"):
        c = t[t["compensation"] == comp.lower()]
        costs[comp] = (f"{c['calib_s'].mean():.2f} s calibration (with the rest), +{c['params_added'].mean():.0f} "
                       f"parameters ({c['size_mb'].mean():.3f} MB vs {cells.iloc[0]['size_mb']:.3f} MB)")
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
            + ". Costs: " + "; ".join(f"{k}: {v}" for k, v in costs.items()) + "."]
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


def main(argv: list[str] | None = None) -> pd.DataFrame:
    argv = list(argv or [])
    seeds = int(argv[argv.index("--seeds") + 1]) if "--seeds" in argv else SEEDS
    tables, lines, walls = [], [], {}
    for model in MODELS:
        t0 = time.perf_counter()
        t = compose(model, "full", seeds)
        walls[model] = time.perf_counter() - t0
        tables.append(t)
        lines += section(model, t) + [""]
    df = pd.concat(tables, ignore_index=True)
    df.to_csv(RESULTS / "compose.csv", index=False)
    head = [f"Design: full factorial at each model's claims-ledger compression endpoint, {seeds} fine-tuning seeds "
            "(0..N-1) per model, paired by seed (every pipeline compresses the same cached AdamW / SAM ρ=0.05 run); "
            "a modest seed count for a shared CPU, below the ledger's power rule for small effects (CIs say what "
            "it resolves). BN re-estimation follows the ledger's protocol (after the whole compression, quantizers "
            "on, before compensation). Not run: the SNT pretraining factor and the supernet pick (designed in "
            "`craftlab.analysis.compose`, too costly per seed here). Train s: the cached run's fine-tuning time; "
            "calib s: compression + BN + compensation fitting, measured in the run that first computed the cell "
            "(cells are cached under `$CRAFTLAB_HOME/compose`). "
            + "; ".join(f"{m}: {w:.0f} s this run, {df[df['model'] == m]['calib_s'].sum():.0f} s of compression "
                        f"(BN, compensation) summed over its {int((df['model'] == m).sum())} cells when they were "
                        "computed" for m, w in walls.items()) + ".", ""]
    print("\n".join(head + lines).rstrip())
    return df


if __name__ == "__main__":
    main(sys.argv[1:])
