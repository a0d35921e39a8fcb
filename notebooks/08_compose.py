# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · The composition study: which gains add up, which overlap
#
# **The question.** Each paper measures its method alone, against its own baseline. A practitioner asks:
# if I fine-tune flat (CrAFT's SAM), quantize, re-estimate BatchNorm statistics and compensate in closed form
# (QwT / QwT-v2), **which steps still pay once the others are on?**
#
# **The claim we check** (the papers' implicit one): *the gains add up* — each step's gain alone predicts
# its gain in the full pipeline.
#
# **The design.** A full factorial, paired by seed, at each model's compression endpoint from the claims
# ledger (where compensation has something to fix): fine-tuning {AdamW, SAM ρ=0.05} × BN re-estimation
# {off, on} (CNNs only: a ViT has no BatchNorm) × compensation {none, QwT, QwT-v2}. Every pipeline of a seed
# compresses the same cached fine-tuning run, so seed-to-seed noise cancels in each contrast. The pretraining
# (SNT) factor is a design of its own on resnet-tiny (`design="snt"`: the SNT study's per-seed pretraining runs,
# Adam or the repvgg stand-in, fine-tuned on digits), read at the end from the benchmark's table; so is the
# supernet step on vit-tiny (`design="supernet"`: the mixed-precision supernet's pick at 5 % of the FP32 BitOPs
# in place of the fixed PTQ setting, a supernet training per seed and arm).
#
# **This notebook** reads the benchmark's table (`benchmarks/results/compose.csv`, written by
# `python -m benchmarks.run compose`) when it is present, and otherwise runs a reduced live design
# (resnet-tiny, 2 seeds; set `CRAFTLAB_COMPOSE_LIVE=1` to force it). Then: the design, the waterfall,
# the interaction plot and a verdict for each pair, all printed from the data.

# %%
import os
from pathlib import Path

import pandas as pd

import craftlab
from craftlab import widgets
from craftlab.analysis import factorial
from craftlab.studies.compose import design_pipelines, endpoint_setting
from craftlab.studies.compose_costs import cost_summary, step_costs
from craftlab.threads import configure_threads
from craftlab.viz.compose_figures import interaction_figure, waterfall_figure

configure_threads()  # THE thread policy: CRAFTLAB_THREADS, else 1 for the tiny zoo models
STATIC = widgets.static_figures()  # a PNG beside every plotly figure: the executed notebook shows them anywhere

CSV = Path(craftlab.__file__).resolve().parents[1] / "benchmarks" / "results" / "compose.csv"
if CSV.is_file() and not os.environ.get("CRAFTLAB_COMPOSE_LIVE"):
    table = pd.read_csv(CSV)
    source = f"the benchmark's table ({CSV.name})"
else:  # a reduced live design: fine-tunes (or reuses) 2 seeds × 2 arms of resnet-tiny
    table = craftlab.compose("resnet-tiny", design="full", seeds=2, progress=False)
    source = "a reduced live design (resnet-tiny, 2 seeds)"
MODELS = list(dict.fromkeys(table["model"]))
print(f"{len(table)} cells from {source}: models {MODELS}, "
      f"{table.groupby('model')['seed'].nunique().to_dict()} paired seeds")

# %% [markdown]
# ## The design
# Each row of the table is one pipeline on one seed. The pipelines of the full design, per model:

# %%
for m in MODELS:
    pipes = design_pipelines(m, "full")
    print(f"{m} ({endpoint_setting(m)}): {len(pipes)} pipelines")
    for p in pipes:
        print("   ", p.label)
cells = table.groupby(["model", "label"], sort=False)[["accuracy", "size_mb", "params_added", "train_s",
                                                        "calib_s"]].mean()
cells.assign(accuracy=100 * cells["accuracy"]).round(2)

# %% [markdown]
# ## The waterfall
# From the plain compressed model to the full pipeline, one step at a time; each bar is the paired gain of
# that step given the steps before it (95 % CI over seeds). Two orders, because a step's gain depends on
# what is already on when the gains overlap.

# %%
ORDERS = {"vit-tiny": (["QwT-v2", "SAM"], ["SAM", "QwT-v2"]),
          "resnet-tiny": (["BN", "QwT-v2", "SAM"], ["SAM", "QwT-v2", "BN"])}
for m in MODELS:
    t = table[table["model"] == m]
    wfs = {" → ".join(o): factorial.waterfall(t, o) for o in ORDERS[m]}
    waterfall_figure(wfs, title=f"{m}: compressed → full pipeline").show()
    for name, w in wfs.items():
        print(f"{m} [{name}]: compressed {100 * w.iloc[0]['level']:.1f} % " + " ".join(
            f"→ +{r['step']} {100 * r['mean_diff']:+.1f} pp [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
            for r in w.iloc[1:].to_dict("records")))

# %% [markdown]
# ## What each step costs
# Every step of every pipeline timed on its own (compression, BN re-estimation, compensation fit, evaluation),
# with the size / BitOPs / parameters it adds: the benchmark's table (`compose_costs.csv`) when present, else one
# pipeline per model measured here. Wall times of a shared machine: compare them within one table only.

# %%
COSTS = CSV.with_name("compose_costs.csv")
if COSTS.is_file() and not os.environ.get("CRAFTLAB_COMPOSE_LIVE"):
    costs = pd.read_csv(COSTS)
else:  # one pipeline per model, every step on, seed 0 (seconds each)
    full = {m: [p for p in design_pipelines(m, "full") if not p.bn_last][-1] for m in MODELS}
    costs = pd.concat([step_costs(full[m], seed=0) for m in MODELS], ignore_index=True)
for m in MODELS:
    part = costs[costs["model"] == m]
    summary = cost_summary([g for _, g in part.groupby(["label", "seed"], sort=False)])
    print(f"{m}: per-step cost (median over {part.groupby(['label', 'seed']).ngroups} timed pipelines)")
    print(summary[["step", "method", "seconds", "d_size_mb", "d_bitops", "d_params"]].round(3).to_string(index=False))
    sam = table[table["model"] == m].groupby("sam")["train_s"].median()
    print(f"   fine-tuning: AdamW {sam[False]:.1f} s, SAM {sam[True]:.1f} s (×{sam[True] / sam[False]:.1f})\n")

# %% [markdown]
# ## The interaction plot
# Parallel lines: the two steps add up. Converging lines: the second step gains less once the first is on
# (their gains overlap). Shown for SAM × QwT-v2 on each model, and BN × QwT-v2 on the CNN.

# %%
for m in MODELS:
    t = table[table["model"] == m]
    interaction_figure(t, "SAM", "QwT-v2", title=f"{m}: SAM × QwT-v2").show()
    if t["bn"].any():
        interaction_figure(t, "BN", "QwT-v2", title=f"{m}: BN × QwT-v2").show()

# %% [markdown]
# ## Verdicts
# Main effects, the two-way interactions (Holm-corrected as one family per model) with a word for each pair
# (*overlap*: significantly sub-additive; *synergy*: super-additive; *add up*: interaction CI within ±1 pp;
# else *inconclusive*), and the additivity test of the full pipeline.

# %% tags=["claim-check"]
print("CLAIM CHECK — do the gains add up?")
for m in MODELS:
    res = factorial.analyze(table[table["model"] == m])
    print(f"\n{m}:")
    for line in res.lines:
        print("  ", line)
    a = res.additivity.iloc[0]
    verdict = {"add up": "SUPPORTS (the gains add up)", "overlap": "CONTRADICTS (the gains overlap)",
               "synergy": "CONTRADICTS (the gains more than add up)", "inconclusive": "INCONCLUSIVE"}[a["word"]]
    print(f"   verdict -> {verdict}: full pipeline {100 * a['full_gain']:+.1f} pp vs sum of parts "
          f"{100 * a['sum_of_parts']:+.1f} pp")

# %% [markdown]
# ## The SNT pretraining factor (resnet-tiny)
# Does compression-friendly pretraining (SNT's claim, with the repvgg stand-in) still pay once CrAFT, BN
# re-estimation and QwT-v2 are on? Read from the benchmark's `compose_snt.csv` (a pretraining per seed and arm is
# too costly to run here; `craftlab.compose("resnet-tiny", design="snt", seeds=N)` computes it).

# %%
SNT_CSV = CSV.with_name("compose_snt.csv")
if SNT_CSV.is_file():
    snt_table = pd.read_csv(SNT_CSV)
    res = factorial.analyze(snt_table)
    print(f"{snt_table['seed'].nunique()} paired seeds, {snt_table['label'].nunique()} pipelines")
    for line in res.lines:
        print("  ", line)
else:
    print("no compose_snt.csv in this checkout: python -m benchmarks.run compose writes it")

# %% [markdown]
# ## The supernet step (vit-tiny)
# Instead of the fixed W3A3 RepQ-ViT setting, the supernet's pick at 5 % of the FP32 BitOPs (the supernet claim's
# budget): does it pay, and does SAM's gain survive it? Read from the benchmark's `compose_supernet.csv` (a
# supernet training per seed and arm; `craftlab.compose("vit-tiny", design="supernet", seeds=N)` computes it).
# The two BitOPs counts differ: PTQ quantizes every Conv/Linear layer but leaves the attention matmuls in float;
# the supernet keeps the patch embedding and head in FP32 and quantizes the attention matmuls.

# %%
SN_CSV = CSV.with_name("compose_supernet.csv")
if SN_CSV.is_file():
    sn_table = pd.read_csv(SN_CSV)
    res = factorial.analyze(sn_table)
    cells = sn_table.groupby("label", sort=False)[["accuracy", "bitops", "bitops_total"]].mean()
    print(f"{sn_table['seed'].nunique()} paired seeds")
    for label, r in cells.iterrows():
        print(f"  {label:36s} {100 * r['accuracy']:5.1f} %   {r['bitops'] / 1e6:6.1f} M BitOPs Conv/Linear, "
              f"{r['bitops_total'] / 1e6:6.1f} M with the attention matmuls")
    for line in res.lines:
        print("  ", line)
    orders = ("SAM → supernet", "supernet → SAM")
    waterfall_figure({o: factorial.waterfall(sn_table, o.split(" → ")) for o in orders},
                     title="vit-tiny: SAM and the supernet step").show()
    interaction_figure(sn_table, "SAM", "supernet", title="vit-tiny: SAM × supernet").show()
else:
    print("no compose_supernet.csv in this checkout: python -m benchmarks.run compose writes it")
