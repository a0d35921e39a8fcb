"""Benchmark: SNT's comparison frame (compression-friendly pretraining), with labelled stand-in transforms.

For vit-tiny and resnet-tiny, pretrained from scratch on mnist5k with Adam, Adam+SAM (ρ 0.05), each stand-in
transform of craftlab.transforms (expand: ExpandNets-style factors; repvgg: RepVGG-style branches, resnet-tiny
only; weight-noise: random weight perturbation) alone and with SAM, over 5 seeds; each pretrained model is
fine-tuned on digits with one plain recipe (AdamW, 8 epochs). Both the pretrained model (on mnist5k's test split:
SNT's claim is about it) and the fine-tuned one (digits test) are pruned (magnitude / Wanda 50/70 %, 2:4; with
BatchNorm re-estimated for resnet-tiny) and quantized (W8A8, W6A6, W4A8, W4A4). Reported: accuracy mean ± std,
paired gains over Adam (paired t by seed, Holm across the settings of each family), sharpness (λmax, Hutchinson
trace, ε-sharpness on 128 probe images) at the end of pretraining and after fine-tuning, cost per step, and the
claim check against the abstract's "up to +2 % (pruning) / +5.4 % (quantization)". SNT's own transformation is
unpublished: every transform here is a stand-in.

Run: ``python -m benchmarks.bench_snt [--seeds 0 1 2 3 4] [--models vit-tiny resnet-tiny]`` (prints markdown; writes
benchmarks/results/snt*.csv). Pretraining and fine-tuning runs are cached in ``$CRAFTLAB_HOME`` (the notebook
04_snt reuses them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

import craftlab
from craftlab.studies import snt as S

RESULTS = Path(__file__).parent / "results"
MODELS = ("vit-tiny", "resnet-tiny")
SEEDS = (0, 1, 2, 3, 4)


def _pm(values: pd.Series, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * values.mean():.{digits}f} ± {scale * values.std():.{digits}f}"


def accuracy_tables(acc: pd.DataFrame) -> list[str]:
    lines = []
    for (model, stage), part in acc.groupby(["model", "stage"], sort=False):
        arms = list(dict.fromkeys(part["arm"]))
        where = "mnist5k test (the pretrained model)" if stage == "source" else "digits test (after fine-tuning)"
        lines += [f"**{model}, {where}**: accuracy %, mean ± std over {part['seed'].nunique()} seeds", "",
                  "| setting | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        g = part.groupby(["setting", "arm"], sort=False)["accuracy"]
        for setting in dict.fromkeys(part["setting"]):
            lines.append(f"| {setting} | " + " | ".join(_pm(g.get_group((setting, a))) for a in arms) + " |")
        lines.append("")
    return lines


def gain_tables(paired: pd.DataFrame) -> list[str]:
    lines = []
    for (model, stage), part in paired.groupby(["model", "stage"], sort=False):
        arms = list(dict.fromkeys(part["arm"]))
        lines += [f"**{model}, {stage}**: arm − Adam, accuracy points, paired by seed; 95% CI; p Holm-corrected "
                  "within each family (pruning / quantization settings). Bold: significant.", "",
                  "| setting | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for setting in dict.fromkeys(part["setting"]):
            cells = []
            for arm in arms:
                r = part[(part["arm"] == arm) & (part["setting"] == setting)].iloc[0]
                text = (f"{100 * r['mean_diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] "
                        f"p {r['p_adjusted']:.2g}")
                cells.append(f"**{text}**" if r["significant"] else text)
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def sharpness_table(sharp: pd.DataFrame) -> list[str]:
    lines = ["**Sharpness** on 128 probe images (mean ± std over seeds): λmax (Lanczos), Hutchinson trace, "
             "ε-sharpness (SAM's ball, ρ 0.05); source = end of pretraining (mnist5k), target = after fine-tuning "
             "(digits).", "", "| model | arm | stage | loss | λmax | trace | ε-sharpness |",
             "|---|---|---|---|---|---|---|"]
    for (model, arm, stage), g in sharp.groupby(["model", "arm", "stage"], sort=False):
        lines.append(f"| {model} | {arm} | {stage} | {_pm(g['loss'], 1, 3)} | {_pm(g['lambda_max'], 1, 3)} | "
                     f"{_pm(g['trace'], 1, 0)} | {_pm(g['eps_sharpness'], 1, 3)} |")
    return lines + [""]


def cost_table(runs: pd.DataFrame, steps: pd.DataFrame) -> list[str]:
    lines = ["**Cost**: time per pretraining step, the arms interleaved step by step on one 64-image batch "
             "(median of 12 steps: the ratio to Adam is the number to read); and the mean time per step recorded "
             "while each run pretrained (runs at different times on a shared machine: not comparable).", "",
             "| model | arm | step (ms) | × Adam | recorded while pretraining (ms/step, mean over seeds) |",
             "|---|---|---|---|---|"]
    for model, part in runs.groupby("model", sort=False):
        rec = part.groupby("arm", sort=False)["time_per_step_s"].mean()
        st = steps[steps["model"] == model].set_index("arm")["seconds_per_step"]
        for arm in rec.index:
            lines.append(f"| {model} | {arm} | {1000 * st[arm]:.1f} | {st[arm] / st[S.BASELINE]:.2f} | "
                         f"{1000 * rec[arm]:.1f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_snt")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--models", nargs="+", default=list(MODELS))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    parts, steps = [], []
    for model in a.models:
        parts.append(S.run_study(model, seeds=a.seeds, log=lambda s: print("  " + s, file=sys.stderr, flush=True)))
        data = craftlab.load_data("mnist5k", model=craftlab.build_model(model))
        steps.append(S.step_times(model, S.snt_arms(model), data).rename_axis("arm").reset_index().assign(model=model))
    res = {k: pd.concat([r[k] for r in parts], ignore_index=True) for k in ("accuracy", "sharpness", "runs")}
    res["steps"] = pd.concat(steps, ignore_index=True)
    paired = S.paired_families(res["accuracy"])
    claims = S.claim_table(res["accuracy"])
    RESULTS.mkdir(exist_ok=True)
    for name, df in {"snt": res["accuracy"], "snt_sharpness": res["sharpness"], "snt_steps": res["steps"],
                     "snt_runs": res["runs"].drop(columns=["pretrain_path", "finetune_path"]),
                     "snt_paired": paired, "snt_claims": claims}.items():
        df.to_csv(RESULTS / f"{name}.csv", index=False)

    print("SNT's transformation is unpublished: `expand` (ExpandNets-style factors, arXiv 1811.10495), `repvgg` "
          "(RepVGG-style branches, BN-free, arXiv 2101.03697) and `weight-noise` (random weight perturbation, "
          "arXiv 2211.11489) are stand-ins, each folded back into the plain architecture after pretraining. "
          f"Pretraining: Adam, the zoo's recipe (expand: lr × {S.EXPAND_LR_SCALE:.2g}); SAM ρ {S.SAM_RHO}; "
          f"fine-tuning: AdamW, {S.TRANSFER_EPOCHS} epochs on digits; seeds {a.seeds}.\n")
    print("\n".join(accuracy_tables(res["accuracy"])))
    print("\n".join(gain_tables(paired)))
    print("\n".join(sharpness_table(res["sharpness"])))
    print("\n".join(cost_table(res["runs"], res["steps"])))
    print("**Claim check** (SNT abstract: up to +2 % after pruning, +5.4 % after quantization over Adam):\n")
    for stage, where in (("source", "the pretrained model, mnist5k"), ("target", "after fine-tuning, digits")):
        print(f"*{where}*:\n")
        print("\n".join(f"- {line}" for line in S.claim_lines(claims, stage)) + "\n")
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")
    return res


if __name__ == "__main__":
    main()
