"""Benchmark: LAST vs LoRA (and full fine-tuning) as accuracy-vs-epochs and accuracy-vs-wall-time curves, each
method at the learning rate chosen on the validation split (:func:`craftlab.adapt.curves.adapt_curves`).

vit-tiny (mnist5k-pretrained) → digits, the claims ledger's arms (LoRA r=4 on qkv, LAST g=1 m=4) and full
fine-tuning; each at its default lr ÷3, ×1, ×3; a few seeds (quick settings on a shared machine).

Run: ``python -m benchmarks.run adapt_curves`` (or ``python -m benchmarks.bench_adapt_curves [--seeds N]
[--epochs E] [--report]``; ``--report`` re-prints from the CSV). Writes ``benchmarks/results/adapt_curves.csv``
(one row per arm × lr × seed × epoch).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

import craftlab
from craftlab.adapt import curves

RESULTS = Path(__file__).parent / "results"
CSV = RESULTS / "adapt_curves.csv"
SEEDS, EPOCHS = 3, 16
LORA, LAST = "LoRA (r=4, qkv)", "LAST (g=1, m=4)"


def _acc_at_time(c: pd.DataFrame, t: float) -> tuple[float, int]:
    """Test accuracy (and epoch) of an arm's curve at the last epoch that ended within `t` seconds."""
    done = c[c["cum_time_s"] <= t + 1e-9]
    if done.empty:
        return float("nan"), 0
    r = done.iloc[-1]
    return float(r["test_accuracy"]), int(r["epoch"])


def markdown(cv: curves.Curves) -> str:
    runs, grid, cur = cv.runs, cv.grid, cv.curves
    E, seeds = int(runs["epoch"].max()), sorted(runs["seed"].unique())
    arms = list(dict.fromkeys(runs["arm"]))
    out = [f"vit-tiny → digits, {E} epochs (cosine over the {E}), batch 64, seeds {[int(s) for s in seeds]} "
           f"({len(seeds)} seeds: a quick setting on a shared 2-core machine, one torch thread). Every arm trains at "
           "its default learning rate ÷3, ×1, ×3 (a rate chosen at the grid's edge gets one more beyond it, up to "
           "twice); the rate is chosen by the mean validation accuracy at epoch "
           f"{E} (360 validation images; the test split chooses nothing). Wall time: training only (evaluation "
           "excluded), cumulative, mean over seeds; tuning costs each arm 3 such runs.", "",
           "**The grid** (accuracy in %, at the last epoch, mean over seeds):", "",
           "| arm | lr | val accuracy (± sd) | test accuracy | chosen |", "|---|---|---|---|---|"]
    for r in grid.to_dict("records"):
        out.append(f"| {r['arm']} | {r['lr']:g} | {100 * r['val_accuracy']:.1f} ± {100 * r['val_sd']:.1f} | "
                   f"{100 * r['test_accuracy']:.1f} | {'**yes**' if r['chosen'] else ''} |")
    head = " | ".join(f"{a} val / test / s" for a in arms)
    out += ["", f"**The curves** at the chosen rates ({', '.join(f'{a}: {lr:g}' for a, lr in cv.chosen.items())}); "
            "val and test accuracy in %, cumulative training seconds:", "",
            f"| epoch | {head} |", "|---|" + "---|" * len(arms)]
    wide = {a: cur[cur["arm"] == a].set_index("epoch") for a in arms}
    for e in range(1, E + 1):
        cells = [f"{100 * wide[a].loc[e, 'val_accuracy']:.1f} / {100 * wide[a].loc[e, 'test_accuracy']:.1f} / "
                 f"{wide[a].loc[e, 'cum_time_s']:.1f}" for a in arms]
        out.append(f"| {e} | " + " | ".join(cells) + " |")
    out += ["", reading(cv)]
    return "\n".join(out)


def reading(cv: curves.Curves) -> str:
    """The sentences of the reading, every number computed from the table."""
    runs, cur = cv.runs, cv.curves
    E = int(runs["epoch"].max())
    if not {LORA, LAST} <= set(cur["arm"]):
        return ""
    chosen = cv.chosen
    pick = runs.merge(pd.DataFrame({"arm": list(chosen), "lr": list(chosen.values())}), on=["arm", "lr"])

    def paired(a: str, b: str, e: int) -> tuple[float, float, float]:
        w = pick[pick["epoch"] == e].pivot_table(index="seed", columns="arm", values="test_accuracy")
        d = (w[b] - w[a]).to_numpy()
        return float(d.mean()), float(d.min()), float(d.max())

    lines = ["**Reading** (computed from the table above):"]
    wins = [e for e in range(1, E + 1) if paired(LORA, LAST, e)[0] > 0]
    m, lo, hi = paired(LORA, LAST, E)
    lines.append(f"- At epoch {E}, tuned LAST − tuned LoRA = {100 * m:+.1f} pp test accuracy (per seed "
                 f"{100 * lo:+.1f} to {100 * hi:+.1f}); LAST's mean is ahead at "
                 f"{len(wins)} of {E} epochs{' (' + ', '.join(map(str, wins)) + ')' if wins else ''}.")
    if "full" in set(cur["arm"]):
        mf, lof, hif = paired("full", LAST, E)
        lines.append(f"- Tuned LAST − tuned full fine-tuning at epoch {E}: {100 * mf:+.1f} pp "
                     f"(per seed {100 * lof:+.1f} to {100 * hif:+.1f}).")
    c = {a: cur[cur["arm"] == a].reset_index(drop=True) for a in set(cur["arm"])}
    t_last = float(c[LAST]["cum_time_s"].iloc[-1])
    lines.append(f"- Wall time: LAST's {E} epochs took {t_last:.0f} s, LoRA's "
                 f"{float(c[LORA]['cum_time_s'].iloc[-1]):.0f} s"
                 + (f", full fine-tuning's {float(c['full']['cum_time_s'].iloc[-1]):.0f} s" if "full" in c else "")
                 + " (mean over seeds).")
    at = []
    for a in c:
        if a == LAST:
            continue
        acc, e = _acc_at_time(c[a], t_last)
        at.append(f"{a} had finished {e} epoch(s)" + (f" at {100 * acc:.1f} % test" if e else ""))
    lines.append(f"- In the time LAST needs for all {E} epochs ({100 * float(c[LAST]['test_accuracy'].iloc[-1]):.1f} "
                 f"% test): " + "; ".join(at) + ". Epoch e of these curves is a point inside one "
                 f"{E}-epoch cosine run, not an e-epoch run (which would anneal to 0 at e): read the time axis as "
                 "'what a run of this length shows along the way', not as the best run of that length.")
    grid = cv.grid
    edge = [f"{r['arm']} ({r['lr']:g})" for r in grid[grid["chosen"]].to_dict("records")
            if r["lr"] in (grid[grid["arm"] == r["arm"]]["lr"].min(), grid[grid["arm"] == r["arm"]]["lr"].max())]
    lines.append("- Chosen rate at the edge of its grid (a wider grid could move it): "
                 + (", ".join(edge) if edge else "none") + ".")
    return "\n".join(lines)


def extend(model, data, cv: curves.Curves, seeds: list[int], epochs: int, rounds: int = 2) -> curves.Curves:
    """A rate chosen at the edge of its arm's grid gets one more rate beyond that edge (×3 or ÷3), up to `rounds`
    times, so that the chosen rate is an interior optimum of the grid whenever these rounds allow."""
    order = list(dict.fromkeys(cv.runs["arm"]))
    for _ in range(rounds):
        more = {}
        for r in cv.grid[cv.grid["chosen"]].to_dict("records"):
            tried = sorted(cv.grid.loc[cv.grid["arm"] == r["arm"], "lr"])
            if r["lr"] == tried[0]:
                more[r["arm"]] = [float(f"{r['lr'] / 3:.3g}")]
            elif r["lr"] == tried[-1]:
                more[r["arm"]] = [float(f"{r['lr'] * 3:.3g}")]
        if not more:
            break
        extra = curves.adapt_curves(model, data, arms={a: curves.CURVE_ARMS[a] for a in more}, lrs=more, seeds=seeds,
                                    epochs=epochs, progress=True)
        runs = pd.concat([cv.runs, extra.runs], ignore_index=True)
        runs = runs.assign(_o=runs["arm"].map(order.index)).sort_values(["_o", "lr", "seed", "epoch"], kind="stable")
        cv = curves.summarize(runs.drop(columns="_o").reset_index(drop=True))
    return cv


def main(argv: list[str] | None = None) -> curves.Curves:
    argv = list(argv or [])
    if "--report" in argv:
        cv = curves.summarize(pd.read_csv(CSV))
        print(markdown(cv))
        return cv
    n = int(argv[argv.index("--seeds") + 1]) if "--seeds" in argv else SEEDS
    epochs = int(argv[argv.index("--epochs") + 1]) if "--epochs" in argv else EPOCHS
    t0 = time.perf_counter()
    model = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    data = craftlab.load_data("digits")
    cv = curves.adapt_curves(model, data, seeds=list(range(n)), epochs=epochs, progress=True)
    cv = extend(model, data, cv, list(range(n)), epochs)
    RESULTS.mkdir(exist_ok=True)
    cv.runs.to_csv(CSV, index=False)
    print(markdown(cv))
    print(f"\n(benchmark wall time {time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} torch thread(s); "
          f"{len(cv.runs) // max(1, epochs)} runs of {epochs} epochs)")
    return cv


if __name__ == "__main__":
    main(sys.argv[1:])
