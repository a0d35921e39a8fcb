"""Benchmark: LAST vs LoRA (and full fine-tuning) as accuracy-vs-epochs and accuracy-vs-wall-time curves, each
method at the learning rate chosen on the validation split (:func:`craftlab.studies.adapt.adapt_curves`).

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
from craftlab.studies import adapt as curves

RESULTS = Path(__file__).parent / "results"
CSV = RESULTS / "adapt_curves.csv"
SEEDS, EPOCHS, WIDEN = 3, 16, 2


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
    out += ["", curves.reading(cv)]
    return "\n".join(out)


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
    cv = curves.adapt_curves(model, data, seeds=list(range(n)), epochs=epochs, widen=WIDEN, progress=True)
    RESULTS.mkdir(exist_ok=True)
    cv.runs.to_csv(CSV, index=False)
    print(markdown(cv))
    print(f"\n(benchmark wall time {time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} torch thread(s); "
          f"{len(cv.runs) // max(1, epochs)} runs of {epochs} epochs)")
    return cv


if __name__ == "__main__":
    main(sys.argv[1:])
