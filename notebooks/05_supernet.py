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
# # 05 · Mixed-precision supernets with LoRA: train once, pick a subnet for any BitOPs budget
#
# **Paper.** Y. Sakuma, M. Yoshimura, J. Otsuka, A. Irie, T. Ohashi, *Mixed-precision Supernet Training from
# Vision Foundation Models using Low Rank Adapter*, arXiv:2403.20080 (2024). No code is public.
#
# **The idea.** Instead of quantizing a fine-tuned model once per hardware target, fine-tune it once into a
# **supernet**: every layer can run at several weight/activation bit-widths (and the network at several
# resolutions, depths, widths), and any configuration of it, a **subnet**, is a working quantized model. A
# search then picks the best subnet for each compute budget, measured in **BitOPs**
# $=\sum_\ell \mathrm{MACs}_\ell \cdot b_w(\ell) \cdot b_a(\ell)$. The paper (1) studies which operators
# (resolution, feature size, width, depth, bit-widths) buy the most BitOPs reduction per accuracy lost, and
# (2) trains the supernet with **frozen base weights and LoRA** and a **progressive** schedule to save memory,
# with LoRA designs ("selective", "multiplex") against gradient conflicts between bit-widths.
#
# **The claim we check at the end:** *"The searched model yields about a 95% reduction in BitOPs without
# incurring performance degradation"* (on Segment Anything; here on `vit-tiny` / `digits`). A BitOPs reduction
# depends on its reference, so we state both: FP32 and W8A8.
#
# **What is reconstructed** (the paper's details are not published): the search space, LoRA rank and
# placement, the progressive schedule, the search algorithm, and "multiplex" LoRA (here: one adapter per
# weight bit-width, selected by each layer's current bits). We use the standard choices of the supernet
# literature: the BigNAS sandwich rule with in-place distillation, LSQ step sizes, OFA-style evolutionary
# search. The CraftLab docs list each choice.
#
# **Runtime, and the two versions of this notebook.** By default (`FULL = False` below) it runs a **quick
# version**, about 3 minutes on 2 CPU cores from an empty cache: **one seed**; the main supernet (per-bit LoRA,
# progressive, 6 epochs) exactly as in the full study; the LoRA-mode / progressive / full-weight comparison and
# the operator study with supernets trained for only 2 epochs; a smaller search (population 12, 4 generations,
# 4 budgets); the memory probe on a ViT-S-sized stand-in at 64 px (`study.QUICK` lists it all). The
# **multi-seed numbers** of the claim check come from the benchmark, `python -m benchmarks.bench_supernet
# --seeds 0 1 2 3 4` (the claims ledger's 5 seeds; results in `benchmarks/results/supernet.md` / `.csv`), which
# the claim check reads when present.
# `FULL = True` runs the full study here (3 seeds, every variant at 6 epochs, paired tests with Holm correction,
# the ViT-B stand-in at 224 px); build it beforehand with
#
# ```bash
# craftlab supernet train --preset notebook    # 24 small supernets (both versions), the searches, memory probes
# ```
#
# (10–15 minutes on 2 CPU cores, 20–30 on busy ones), then it runs in about a minute. Every supernet is trained
# once and cached in `$CRAFTLAB_HOME`.

# %%
import copy
import dataclasses
import math
import random
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

import craftlab
from craftlab import stats, widgets
from craftlab.studies import supernet as study
from craftlab.supernet import build_supernet, evaluate_configs, get_supernet, load_supernet
from craftlab.supernet.layers import lsq_quantize
from craftlab.supernet.store import supernet_dir
from craftlab.supernet.train import make_optimizer, sandwich_configs, sandwich_step

STATIC = widgets.static_figures()  # a PNG beside every plotly figure: the executed notebook shows them anywhere
T0, C0 = time.perf_counter(), time.process_time()
pd.set_option("display.precision", 3)
FULL = False  # True: the full study (3 seeds, every supernet at full length; ~15 min from an empty cache)
SEEDS = (0, 1, 2) if FULL else study.QUICK["seeds"]
SPECS = study.notebook_specs(SEEDS, quick=not FULL)
CMP = "" if FULL else "short:"  # prefix of the supernets of the LoRA-mode / progressive / full-weight comparison
print(("FULL study" if FULL else "quick version") + f": seeds {SEEDS}")
cached = sum((supernet_dir(s) / "craftlab.json").exists() for s in SPECS.values())
print(f"{cached} of {len(SPECS)} supernets cached in {craftlab.cache.home()}"
      + ("" if cached == len(SPECS) else " (the missing ones are trained below)"))

# %% [markdown]
# ## 1. The base model and the uniform-quantization references
#
# The supernet starts from a fine-tuned model: `vit-tiny` (mnist5k "foundation", fine-tuned on `digits` with
# AdamW, from the run cache), one per seed. The references are that model in FP32 and after uniform
# post-training quantization (`craftlab.quantize` at W8A8, W6A6, W4A8, W4A4: every Linear of the blocks; the
# patch embedding and the classifier head stay FP32, as they do in the supernet). `craftlab.model_stats`
# counts MACs of every Conv2d/Linear and BitOPs with 32 bits for float layers; the attention matmuls are not
# counted.

# %%
data = craftlab.load_data("digits")
bases = {s: craftlab.load_checkpoint(craftlab.get_run(SPECS[f"per-bit/s{s}"].base_run(), progress=False))
         for s in SEEDS}
ptq = pd.concat([pd.DataFrame(study.ptq_baselines(bases[s], data)).assign(seed=s) for s in SEEDS])
FP32_BITOPS = ptq.query("label == 'FP32'")["bitops"].iloc[0]
W8A8_BITOPS = ptq.query("label == 'W8A8'")["bitops"].iloc[0]
ptq["bitops % FP32"] = 100 * ptq["bitops"] / FP32_BITOPS
ptq_mean = ptq.groupby("label", sort=False).agg(accuracy=("accuracy", "mean"), sd=("accuracy", "std"),
                                                 bitops=("bitops", "first"), pct=("bitops % FP32", "first"))
print(f"FP32: {FP32_BITOPS:.3g} BitOPs per image; W8A8: {W8A8_BITOPS:.3g} ({100 * W8A8_BITOPS / FP32_BITOPS:.1f}%)")
ptq_mean

# %%
go.Figure(go.Scatter(x=ptq_mean["pct"], y=100 * ptq_mean["accuracy"], error_y=dict(array=100 * ptq_mean["sd"]),
                     text=ptq_mean.index, mode="markers+text", textposition="top center"),
          layout=dict(title=f"uniform PTQ of the base model (test accuracy, mean ± sd over seeds {SEEDS})", height=380,
                      xaxis=dict(title="BitOPs, % of FP32 (log)", type="log"), yaxis_title="test accuracy (%)"))

# %% [markdown]
# Even W8A8 is 8.3% of the FP32 BitOPs (a 91.7% reduction), but the FP32 patch embedding alone is 2.2% of
# FP32: with a float stem and head no subnet can go below that floor, and against a W8A8 reference a 95%
# reduction is out of reach (below, we say how far it goes).
#
# ## 2. BitOPs by hand
#
# A ViT layer's MACs are tokens × inputs × outputs (17 tokens: a 4×4 grid of 7×7 patches plus the class token).
# Give the attention layers W8A8 and the MLP layers W4A4, count by hand, and compare with the supernet's cost
# model and with `model_stats` on the exported subnet (built in section 4).

# %%
base = bases[0]
x_one = next(iter(data.test))[0][:1]
tokens = base.patch_embed.num_patches + base.num_prefix_tokens
hand = []
for name, mod in base.named_modules():
    if isinstance(mod, torch.nn.Linear) and name.startswith("blocks."):
        w_bits, a_bits = (8, 8) if ".attn." in name else (4, 4)
        hand.append({"layer": name, "macs": tokens * mod.in_features * mod.out_features, "w": w_bits, "a": a_bits})
stem = base.patch_embed.num_patches * base.patch_embed.proj.weight[0].numel() * base.embed_dim
head = base.head.in_features * base.head.out_features
hand_bitops = sum(r["macs"] * r["w"] * r["a"] for r in hand) + (stem + head) * 32 * 32  # the Linear layers
# the two attention matmuls of each block (q·kᵀ and attn·v: tokens² × width MACs each) run on activations
# quantized at the block's qkv activation bits (supernet.BITOPS_CONVENTION): both operands at a_qkv bits
qkv_bits = [r["a"] for r in hand if r["layer"].endswith("attn.qkv")]
attn_bitops = sum(2 * tokens * tokens * base.embed_dim * a * a for a in qkv_bits)
hand_total = hand_bitops + attn_bitops
print(f"by hand: {sum(r['macs'] for r in hand) + stem + head:,} Linear MACs, {hand_bitops:,} BitOPs in the Linear "
      f"layers + {attn_bitops:,} in the attention matmuls = {hand_total:,} ({100 * hand_total / FP32_BITOPS:.2f}% of "
      "FP32)")
layer_names = [r["layer"] for r in hand]
fig = go.Figure(layout=dict(title="BitOPs per layer (log): FP32, W8A8, attention W8A8 + MLP W4A4", height=400,
                            yaxis=dict(type="log", title="BitOPs"), barmode="group", margin=dict(b=150)))
for label, bits in [("FP32", lambda r: (32, 32)), ("W8A8", lambda r: (8, 8)), ("mixed", lambda r: (r["w"], r["a"]))]:
    fig.add_bar(x=layer_names, y=[r["macs"] * math.prod(bits(r)) for r in hand], name=label)
fig

# %% [markdown]
# ## 3. The quantizer: LSQ fake quantization with a straight-through estimator
#
# Each layer quantizes its weights (per output channel) and its input (per tensor) on signed grids
# $q\in[-2^{b-1}, 2^{b-1}-1]$ with a **learnable step** $s$ per candidate bit-width (LSQ, Esser et al. 2020):
# $\hat v = \mathrm{round}(\mathrm{clamp}(v/s, q_{\min}, q_{\max}))\cdot s$. Rounding has no useful
# gradient, so LSQ passes the gradient straight through it (inside the range), which gives the step the
# gradient $\mathrm{round}(v/s) - v/s$ inside and $q_{\min}$ / $q_{\max}$ where it clamps, scaled by
# $g = 1/\sqrt{N\,q_{\max}}$. Written the way the paper's pseudo-code does it, and checked against the library's
# `lsq_quantize` (a custom autograd function whose forward is exactly `craftlab.quant.fake_quant`; it computes
# $v\cdot(1/s)$ where the paper divides, hence float-rounding-level differences):


# %%
def lsq_from_scratch(v, step, bits, per_example):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    g = 1 / math.sqrt(per_example * qmax)
    step = step * g + (step - step * g).detach()  # value: step; gradient: scaled by g
    q = torch.clamp(v / step, qmin, qmax)
    return (q + (q.round() - q).detach()) * step  # round in the forward pass, identity in the backward pass


w = base.blocks[0].mlp.fc1.weight.detach()
for fn in (lsq_from_scratch, lsq_quantize):
    v, s = w.clone().requires_grad_(), (w.abs().amax(1, keepdim=True) / 9).requires_grad_()  # the largest values clip
    out = fn(v, s, 4, w.shape[1])
    out.pow(2).sum().backward()
    if fn is lsq_from_scratch:
        ref = (out.detach(), v.grad, s.grad)
clipped = ((w / s.detach()).round() > 7) | ((w / s.detach()).round() < -8)
print(f"{int(clipped.sum())} of {w.numel()} weights clip; from scratch vs lsq_quantize: values differ by at most "
      f"{(out.detach() - ref[0]).abs().max():.1e}, input gradients by {(v.grad - ref[1]).abs().max():.1e}, "
      f"step gradients by a relative {((s.grad - ref[2]).abs() / ref[2].abs().clamp_min(1e-12)).max():.1e}")
torch.testing.assert_close(out.detach(), ref[0])
torch.testing.assert_close(v.grad, ref[1])
torch.testing.assert_close(s.grad, ref[2], rtol=1e-4, atol=1e-6)

xs = torch.linspace(-1.2, 1.2, 601).requires_grad_()
step = torch.tensor(0.25, requires_grad=True)
fig = make_subplots(rows=1, cols=2, subplot_titles=("3-bit fake quantization, step 0.25", "d(output)/d(step) (LSQ)"))
fq = lsq_quantize(xs, step, 3, 1)
per_x = [torch.autograd.grad(lsq_quantize(x0.reshape(1), step, 3, 1).sum(), step)[0].item() * math.sqrt(3)
         for x0 in xs.detach()[::5]]
fig.add_scatter(x=xs.detach(), y=fq.detach(), name="Q(x)", row=1, col=1)
fig.add_scatter(x=xs.detach()[::5], y=per_x, name="∂Q/∂s (unscaled)", row=1, col=2)
fig.update_layout(height=360, showlegend=False)
fig

# %% [markdown]
# Inside the range the step's gradient is the rounding error, a saw-tooth; outside it is the clamp level: the
# step grows when many values clip and shrinks when the grid is too coarse. CraftLab stores $\log s$ (Adam then
# moves it by relative amounts and it stays positive) and starts it from the MSE-optimal range
# (`quant.qparams(method="mse")`): both are our choices, not LSQ's.
#
# ## 4. A supernet: configure, run, export, cost
#
# `build_supernet` copies the model, swaps every searchable Linear for a switchable fake-quant layer (steps
# for W{2,3,4,6,8} × A{4,6,8}), initializes the activation steps on the calibration images and adds LoRA with
# HF `peft`, here one adapter per weight bit-width. A configuration sets each layer's bits (and, when built
# with them, the resolution, depth, MLP width and heads); `export` turns it into a plain model of
# `QuantLinear` layers with the LoRA update merged and quantized, and must give the same outputs.

# %%
t = time.perf_counter()
fresh = build_supernet(base, data.calib, lora="per-bit", rank=4)
space = fresh.space
n_trainable = sum(p.numel() for p in fresh.parameters() if p.requires_grad)
print(f"built in {time.perf_counter() - t:.1f} s: {len(space.layers)} searchable layers, "
      f"10^{space.size():.0f} configurations; {n_trainable:,} trainable parameters (LoRA + steps) of "
      f"{sum(p.numel() for p in fresh.parameters()):,}")
mixed = dataclasses.replace(space.uniform(8, 8), w_bits=tuple(r["w"] for r in hand), a_bits=tuple(r["a"] for r in hand))
fresh.set_config(mixed)
plain = fresh.export(mixed)
with torch.no_grad():
    same = torch.equal(fresh.eval()(x_one.repeat(8, 1, 1, 1)), plain(x_one.repeat(8, 1, 1, 1)))
cost = fresh.cost(mixed)
print(f"attention W8A8 + MLP W4A4: supernet cost {cost['bitops']:,} BitOPs (by hand {hand_total:,}); without the "
      f"attention matmuls {cost['bitops'] - cost['bitops_attention']:,}, model_stats(export) "
      f"{craftlab.model_stats(plain, x_one)['bitops']:,} (it counts Conv2d/Linear only), by hand {hand_bitops:,}; "
      f"exported outputs identical: {same}")
assert cost["bitops"] == hand_total and same
assert cost["bitops"] - cost["bitops_attention"] == craftlab.model_stats(plain, x_one)["bitops"] == hand_bitops
checks = [mixed, space.uniform(4, 4)]
print("untrained supernet, test accuracy:",
      {space.label(c): round(r["accuracy"], 3) for c, r in zip(checks, evaluate_configs(fresh, data, checks))})


def bits_figure(cfg, title):
    short = [n.replace("blocks.", "b").replace(".attn", "").replace(".mlp", "") for n in cfg_layers]
    return go.Figure(go.Heatmap(z=[list(cfg.w_bits), list(cfg.a_bits)], x=short, y=["weights", "inputs"],
                                colorscale="Viridis", zmin=2, zmax=8, text=[list(cfg.w_bits), list(cfg.a_bits)],
                                texttemplate="%{text}", colorbar=dict(title="bits")),
                     layout=dict(title=title, height=250, margin=dict(t=50, b=40)))


cfg_layers = list(space.layers)
bits_figure(space.sample(random.Random(0)), "a random subnet: bits per layer")

# %% [markdown]
# ## 5. Training the supernet: the sandwich rule, by hand and from the library
#
# Each step trains several subnets on the same batch: the **largest** (all W8A8) on the labels, then random
# subnets and the **smallest** (all W2A4) on the largest one's soft predictions (in-place distillation,
# BigNAS), summing the gradients into **one** optimizer step. With LoRA only the adapters and the step sizes
# move. One step written out, then `sandwich_step` from the same state:

# %%
x, y = next(iter(data.train))
configs = sandwich_configs(fresh, random.Random(0), n_random=1)
by_hand, lib = copy.deepcopy(fresh).train(), copy.deepcopy(fresh).train()
opt = make_optimizer(by_hand, lr=2e-3, weight_lr=2e-4, step_lr=1e-3)
opt.zero_grad()
by_hand.set_config(configs[0])
logits = by_hand(x)
F.cross_entropy(logits, y).backward()  # the largest subnet learns from the labels
teacher = logits.detach()
for cfg in configs[1:]:  # the others learn from the largest one's predictions
    by_hand.set_config(cfg)
    (-(teacher.softmax(-1) * by_hand(x).log_softmax(-1)).sum(-1).mean()).backward()
opt.step()
losses = sandwich_step(lib, make_optimizer(lib, lr=2e-3, weight_lr=2e-4, step_lr=1e-3), x, y, configs)
same = all(torch.equal(a, b) for a, b in zip(by_hand.parameters(), lib.parameters()))
moved = [n for n, p in lib.named_parameters() if not torch.equal(p, dict(fresh.named_parameters())[n])]
print(f"losses {[round(v, 3) for v in losses]}; by hand == sandwich_step: {same}; "
      f"{len(moved)} tensors moved, all LoRA or steps: {all('lora_' in n or '_log_step' in n for n in moved)}")
assert same

# %% [markdown]
# `train_supernet(fresh, data, epochs=6)` repeats this over the training set with a cosine schedule; with
# `progressive=True` (the default) it first samples only W8/W6 and A8, adds W4/W3 and A6 after a third of
# training, and W2/A4 for the last third (our reading of the paper's progressive strategy). The cached supernets
# below were trained exactly so (`get_supernet` calls it once per specification): per-bit LoRA (the main one,
# 6 epochs), one shared LoRA, per-bit without the progressive schedule ("flat") and full-weight training (in the
# quick version 2 epochs each, one seed, named `short:…`, with a 2-epoch per-bit one to compare them with; with
# `FULL` 6 epochs and three seeds); and one W8A8 supernet per structural operator for section 6. From the cache
# each loads in under a second; a missing one is trained here (about 50 s for a 6-epoch one on 2 cores, 10 s for
# a 2-epoch one).

# %%
t = time.perf_counter()
nets = {name: load_supernet(get_supernet(spec))  # trained once, then read from the cache
        for name, spec in tqdm([(n, sp) for n, sp in SPECS.items() if n.startswith("per-bit/")], desc="main supernets")}
print(f"main supernets (per-bit LoRA, progressive, seeds {SEEDS}) ready in {time.perf_counter() - t:.0f} s")

# %%
t = time.perf_counter()
nets |= {name: load_supernet(get_supernet(spec))
         for name, spec in tqdm([(n, sp) for n, sp in SPECS.items() if n not in nets], desc="other supernets")}
print(f"{len(nets)} supernets ready in {time.perf_counter() - t:.0f} s")

# %% [markdown]
# Their training curves (seed 0):

# %%
VARIANTS = {"per-bit": "per-bit LoRA, progressive", "shared": "shared LoRA, progressive",
            "flat": "per-bit LoRA, all bits from the start", "full": "full weights, progressive"}
fig = make_subplots(rows=1, cols=2, subplot_titles=("largest subnet (W8A8)", "smallest subnet (W2A4)"))
for i, (key, label) in enumerate(VARIANTS.items()):
    hist = pd.DataFrame(nets[f"{CMP}{key}/s0"].craftlab_meta["history"])
    for col, tag in ((1, "largest"), (2, "smallest")):
        fig.add_scatter(x=hist["epoch"], y=100 * hist[f"val_accuracy_{tag}"], name=label, legendgroup=key,
                        showlegend=col == 1, line=dict(color=f"hsl({90 * i},60%,45%)"), row=1, col=col)
fig.update_layout(height=380, title="validation accuracy during supernet training (seed 0"
                  + ("" if FULL else ", the 2-epoch comparison supernets") + ")")
fig.update_yaxes(title_text="val accuracy (%)")
fig.update_xaxes(title_text="epoch")
fig

# %% [markdown]
# ## 6. Which operator buys the most BitOPs per accuracy lost?
#
# The paper's search-space study, each operator alone: the bit-width supernet (uniform subnets W8A8 … W2A4)
# against four W8A8 supernets with one structural operator each: input **resolution** (28, 21, 14 px; the
# position embedding resampled), **depth** (the first 2–4 blocks), **MLP width** (hidden/embedding ratio
# 1–2, hidden units sorted by importance first, as OFA does) and **heads** (2–4, sorted the same way). The
# sandwich rule trains the largest and the smallest value at every step but a middle value only when a random
# subnet draws it, so in the full study these four get 4 random subnets per step and 8 epochs
# (`study.OPERATOR_TRAINING`); the quick version trains them for only 2 epochs with 2 random subnets, so their
# middle values are under-trained and the structural curves sit lower than they would. Test accuracy against
# BitOPs:

# %%
rows = []
bits_net = nets["per-bit/s0"]
uniform = [bits_net.space.uniform(w, a) for w, a in [(8, 8), (6, 6), (4, 8), (4, 6), (4, 4), (3, 4), (2, 4)]]
for r in evaluate_configs(bits_net, data, uniform):
    rows.append({"operator": "bits", "value": r["label"].split()[0], **r})
for op, kw in study.OPERATOR_STUDY.items():
    sn = nets[f"op:{op}"]
    values = next(iter(kw.values()))
    cfgs = [dataclasses.replace(sn.space.largest(), **{op: v}) for v in values]
    for v, r in zip(values, evaluate_configs(sn, data, cfgs)):
        rows.append({"operator": op, "value": f"{op} {v:g}", **r})
ops = pd.DataFrame(rows)
ops["bitops % FP32"] = 100 * ops["bitops"] / FP32_BITOPS
fig = go.Figure(layout=dict(title="operator study: test accuracy vs BitOPs, each operator alone", height=420,
                            xaxis=dict(title="BitOPs, % of FP32 (log)", type="log"), yaxis_title="test accuracy (%)"))
for op, part in ops.groupby("operator", sort=False):
    fig.add_scatter(x=part["bitops % FP32"], y=100 * part["accuracy"], text=part["value"], name=op,
                    mode="lines+markers", hovertemplate="%{text}: %{y:.1f}%")
fig.add_hline(y=100 * ptq_mean.loc["FP32", "accuracy"], line_dash="dot", annotation_text="FP32 base")
fig

# %%
for op, part in ops.groupby("operator", sort=False):
    top = part.loc[part["bitops % FP32"].idxmax()]
    print(f"{op} (from {top['value']}, {top['bitops % FP32']:.1f}% of FP32 BitOPs, {100 * top['accuracy']:.1f}%): "
          + ", ".join(f"{r['value']} {r['bitops % FP32']:.1f}% -> {100 * (r['accuracy'] - top['accuracy']):+.1f} pts"
                      for _, r in part.iterrows() if r["value"] != top["value"]))
ops[["operator", "value", "accuracy", "bitops % FP32", "size_mb"]]

# %% [markdown]
# The lines above give, for each operator, what each step away from its largest setting saves in BitOPs and
# costs in accuracy (the quick version's 2-epoch operator supernets exaggerate the structural losses). Read
# them against the bits: width and depth cut MACs, while bits cut the cost of *every* MAC, by (8·8)/(2·4) from
# W8A8 to W2A4. Resolution has a handicap of its own here: a 28-px digit has only 16 patches, and below 28 px
# the patch grid no longer lines up with the one the model was trained on. Where the bits curve is the
# flattest, bit-widths are the operator to search, which is what the rest of the notebook does.
#
# ## 7. Shared vs per-bit LoRA, progressive vs not, LoRA vs full weights
#
# Uniform subnets of each variant (the base model, LoRA initialization, data order and sampled subnets change
# with the seed). With `FULL`: three seeds of 6-epoch supernets, paired by seed, per-bit LoRA against each
# alternative, with Holm correction across the six bit settings of each comparison (`craftlab.stats.compare_arms`).
# The quick version has one seed of 2-epoch supernets: differences only, no test (and 2 epochs favour whatever
# learns fastest). The benchmark does not repeat this comparison: for its three-seed version run with `FULL = True`.

# %%
SETTINGS = [(8, 8), (6, 6), (4, 8), (4, 4), (3, 4), (2, 4)]
rows = []
for key in VARIANTS:
    for s in SEEDS:
        sn = nets[f"{CMP}{key}/s{s}"]
        for r in evaluate_configs(sn, data, [sn.space.uniform(w, a) for w, a in SETTINGS]):
            rows.append({"arm": key, "seed": s, "setting": r["label"].split()[0], "accuracy": r["accuracy"]})
variants = pd.DataFrame(rows)
summary = variants.groupby(["setting", "arm"], sort=False)["accuracy"].agg(["mean", "std"]).unstack("arm") * 100
fig = go.Figure(layout=dict(title=f"uniform subnets of each supernet variant (test accuracy, seeds {SEEDS}"
                            + ("" if FULL else ", 2 epochs each") + ")",
                            height=400, barmode="group", yaxis=dict(title="test accuracy (%)", range=[85, 100])))
for key, label in VARIANTS.items():
    fig.add_bar(x=summary.index, y=summary[("mean", key)], error_y=dict(array=summary[("std", key)]), name=label)
fig

# %%
comparisons = []
for other in ("shared", "flat", "full"):
    if len(SEEDS) > 1:
        table = stats.compare_arms(variants, baseline=other, treatment="per-bit")
    else:  # one seed: the difference only
        pair = variants[variants["arm"].isin(["per-bit", other])].pivot(index="setting", columns="arm",
                                                                        values="accuracy")
        table = pd.DataFrame({"setting": pair.index, "mean_diff": pair["per-bit"] - pair[other], "significant": False})
    comparisons.append(table.assign(comparison=f"per-bit vs {other}"))
comparisons = pd.concat(comparisons)
comparisons["mean_diff_pp"] = 100 * comparisons["mean_diff"]
comparisons.pivot(index="setting", columns="comparison", values="mean_diff_pp").loc[
    [f"W{w}A{a}" for w, a in SETTINGS]].round(2)

# %%
for other in ("shared", "flat", "full"):
    part = comparisons[comparisons["comparison"] == f"per-bit vs {other}"]
    sig = part[part["significant"]]
    print(f"per-bit vs {other}: mean difference over settings {part['mean_diff_pp'].mean():+.2f} pp; "
          + (f"significant after Holm at {len(sig)} of {len(part)} settings"
             + (f" ({', '.join(sig['setting'])})" if len(sig) else "") if len(SEEDS) > 1
             else "one seed of 2-epoch supernets: no test (FULL = True for three seeds)"))

# %% [markdown]
# With 359 test images one image is 0.28 pp; even with three seeds only large effects can show up as
# significant, and one seed tests nothing: read the point estimates with that in mind. How far apart the four
# recipes land on this small model is the mean difference printed above; the paper's motivation for per-bit
# ("multiplex") LoRA and for the progressive schedule, gradient conflicts and unstable 2-bit subnets of a large
# foundation model, may simply be mild here.
#
# ## 8. Training memory: LoRA vs full weights
#
# What a training step holds, counted by PyTorch: tensors saved for backward (peak, via
# `torch.autograd.graph.saved_tensors_hooks`), gradients and AdamW's two moments. On `vit-tiny` (recorded when
# each supernet was trained: first sandwich step, batch 64) and on a larger stand-in, random init, batch 2, one
# sandwich step with the largest and smallest subnets, measured once and cached: with `FULL` a **ViT-B-sized**
# one (timm `vit_base_patch16_224` at 224 px, about a minute), in the quick version a **ViT-S-sized** one (timm
# `vit_small_patch16_224` at 64 px, a few seconds). The benchmark's table has the ViT-B numbers (per-bit LoRA
# 983 MB per step against 1631 MB for full weights).

# %%
t = time.perf_counter()
vitb = study.standin_memory(**({} if FULL else study.QUICK["standin"]))
STANDIN = "ViT-B stand-in (224 px, batch 2)" if FULL else "ViT-S stand-in (64 px, batch 2)"
print(f"{STANDIN} memory ready in {time.perf_counter() - t:.0f} s")
mem_rows = []
for key, label in (("per-bit", "per-bit LoRA"), ("shared", "shared LoRA"), ("full", "full weights")):
    mem_rows.append({"model": "vit-tiny (batch 64)", "variant": label,
                     **nets[f"{CMP}{key}/s0"].craftlab_meta["memory"]})
    mem_rows.append({"model": STANDIN, "variant": label,
                     **vitb["none" if key == "full" else key]})
mem = pd.DataFrame(mem_rows)
fig = make_subplots(rows=1, cols=2, subplot_titles=list(dict.fromkeys(mem["model"])))
for i, (_, part) in enumerate(mem.groupby("model", sort=False)):
    for j, (col, label) in enumerate((("saved_bytes", "saved for backward"), ("grad_bytes", "gradients"),
                                      ("optimizer_bytes", "AdamW state"))):
        fig.add_bar(x=part["variant"], y=part[col] / 2**20, name=label, legendgroup=col, showlegend=i == 0,
                    marker_color=["#4c78a8", "#f58518", "#54a24b"][j], row=1, col=i + 1)
fig.update_layout(barmode="stack", height=400, title="training memory per step (MB)")
fig.update_yaxes(title_text="MB")
fig

# %%
mem.assign(total_MB=mem["total_bytes"] / 2**20, trainable=mem["trainable_params"])[
    ["model", "variant", "total_MB", "trainable"]]

# %% [markdown]
# LoRA removes the gradients and the optimizer state of every base weight (three copies of the weights with
# AdamW). It does not remove activations, and in this quantization-aware design it adds one: the layer
# quantizes $W + sBA$, so the sum is kept for the backward pass, one weight-sized tensor per layer of the subnet
# being trained. On `vit-tiny` the rank-4 adapters of five bit-widths are a large fraction of a 139 k-parameter
# model; on the larger stand-in the saving is what the paper is after.
#
# ## 9. Search: the best subnet per BitOPs budget
#
# Evolutionary search (OFA's scheme: population 16, 6 generations, 25% parents, half mutation, half crossover;
# a subnet over the budget is repaired by lowering random genes) on the **validation** split, for budgets of
# 3–8% of the FP32 BitOPs, on the main supernet of each seed; every evaluated subnet is cached. The quick version
# searches with population 12, 4 generations, budgets 3, 4, 5 and 6%. Then the chosen
# subnets are measured on the **test** split, against the uniform subnets of the same supernet and uniform PTQ.

# %%
t = time.perf_counter()
searches = {s: study.main_search(s, data, nets[f"per-bit/s{s}"], quick=not FULL)[1] for s in SEEDS}
print(f"searches ready in {time.perf_counter() - t:.0f} s "
      f"({sum(len(r.points) for r in searches.values())} subnets evaluated on the validation split)")
searches[0].table()

# %%
picked = []
for s in SEEDS:
    sn, rep = nets[f"per-bit/s{s}"], searches[s]
    for r, test in zip(rep.results, evaluate_configs(sn, data, [r.best["config"] for r in rep.results])):
        picked.append({"seed": s, "budget % FP32": round(100 * r.budget / FP32_BITOPS, 2), "label": r.best["label"],
                       "val_accuracy": r.best["accuracy"], "test_accuracy": test["accuracy"],
                       "bitops % FP32": 100 * r.best["bitops"] / FP32_BITOPS, "config": r.best["config"]})
picked = pd.DataFrame(picked)
unif = pd.DataFrame([{"setting": r["label"].split()[0], "accuracy": r["accuracy"]} for s in SEEDS
                     for r in evaluate_configs(nets[f"per-bit/s{s}"], data,
                                               [bits_net.space.uniform(w, a) for w, a in SETTINGS])])
unif = unif.groupby("setting", sort=False)["accuracy"].mean()
unif_bitops = {bits_net.space.label(c): 100 * bits_net.cost(c)["bitops"] / FP32_BITOPS
               for c in [bits_net.space.uniform(w, a) for w, a in SETTINGS]}
front = pd.DataFrame(searches[0].pareto)
fig = make_subplots(rows=1, cols=2, subplot_titles=("search on validation (seed 0)",
                                                    f"test accuracy of the chosen subnets (seeds {SEEDS})"))
pts = pd.DataFrame(searches[0].points)
fig.add_scatter(x=100 * pts["bitops"] / FP32_BITOPS, y=100 * pts["accuracy"], mode="markers", name="evaluated",
                marker=dict(color="lightgray", size=5), row=1, col=1)
fig.add_scatter(x=100 * front["bitops"] / FP32_BITOPS, y=100 * front["accuracy"], mode="lines+markers",
                name="Pareto front (val)", line=dict(shape="hv"), row=1, col=1)
by_budget = picked.groupby("budget % FP32").agg(x=("bitops % FP32", "mean"), y=("test_accuracy", "mean"),
                                                sd=("test_accuracy", "std"))
fig.add_scatter(x=by_budget["x"], y=100 * by_budget["y"], error_y=dict(array=100 * by_budget["sd"]),
                mode="lines+markers", name="searched subnets", row=1, col=2)
fig.add_scatter(x=[unif_bitops[k] for k in unif.index], y=100 * unif.values, text=list(unif.index),
                mode="markers+text", textposition="bottom center", name="uniform subnets", row=1, col=2)
ptq_q = ptq_mean.drop("FP32")
fig.add_scatter(x=ptq_q["pct"], y=100 * ptq_q["accuracy"], text=[f"PTQ {k}" for k in ptq_q.index],
                mode="markers+text", textposition="top center", marker_symbol="x", name="uniform PTQ", row=1, col=2)
fig.add_hline(y=100 * ptq_mean.loc["FP32", "accuracy"], line_dash="dot", annotation_text="FP32", row=1, col=2)
# The 95 % reduction line as a trace, in data coordinates: add_vline's annotation on a log axis is placed at
# 10^x, far outside the plot.
ys = [*(100 * by_budget["y"]), *(100 * unif.values), *(100 * ptq_q["accuracy"]), 100 * ptq_mean.loc["FP32", "accuracy"]]
fig.add_scatter(x=[5, 5], y=[min(ys) - 1, max(ys) + 1], mode="lines+text", text=["", "95% reduction"],
                textposition="top left", line=dict(dash="dash", color="gray"), name="5% of FP32 BitOPs",
                showlegend=False, row=1, col=2)
fig.update_xaxes(type="log", title_text="BitOPs, % of FP32 (log)")
fig.update_yaxes(title_text="accuracy (%)")
fig.update_layout(height=430)
fig


# %% [markdown]
# Pick a budget: the subnet the search chose for it (seed 0), its bits per layer and its accuracy. (Headless,
# the figure shows the 5% budget.)

# %%
def chosen_subnet(budget):
    row = picked[(picked["seed"] == 0) & (picked["budget % FP32"] == budget)].iloc[0]
    return bits_figure(row["config"], f"budget {budget}% of FP32: {row['label']}, {row['bitops % FP32']:.2f}% BitOPs, "
                                      f"val {100 * row['val_accuracy']:.1f}%, test {100 * row['test_accuracy']:.1f}%")


widgets.interactive_figure(chosen_subnet, budget={"options": sorted(set(picked["budget % FP32"])), "value": 5.0})

# %% [markdown]
# ## 10. Claim check
#
# *"About a 95% reduction in BitOPs without performance degradation."* We test it directly: the subnet searched
# under a budget of **5% of the FP32 BitOPs** (a 95% reduction vs FP32) against the FP32 base model of the same
# seed, on the test split, paired by seed. "Without degradation" is read as non-inferiority with a 1-point
# margin, with the claims ledger's verdict (`study.no_degradation`: `craftlab.analysis.power.endpoint_verdict`
# with the margin and effect of the ledger's `supernet-ni` row: *supports* when the 90% CI of the change stays
# above −1 pp, *contradicts* when it lies below, otherwise *inconclusive* with the effect the seeds could detect).
# We also give the largest reduction whose subnet stays within 1 pp of FP32 on validation (the selection) and
# its test accuracy, and the same numbers against a W8A8 reference. A confidence interval needs seeds: the quick
# version measures seed 0 live and takes the **multi-seed verdict from the benchmark run**
# (`python -m benchmarks.bench_supernet`, `benchmarks/results/supernet.csv`; same supernets, the quick search:
# population 12, 4 generations) when that file is present; `FULL = True` computes it here.

# %% tags=["claim-check"]
fp32 = ptq[ptq["label"] == "FP32"].set_index("seed")["accuracy"]
w8a8 = ptq[ptq["label"] == "W8A8"].set_index("seed")["accuracy"]
at5 = picked[picked["budget % FP32"] == 5.0].set_index("seed")
red_fp32 = 100 - at5["bitops % FP32"].mean()
red_w8a8 = 100 * (1 - at5["bitops % FP32"].mean() / (100 * W8A8_BITOPS / FP32_BITOPS))
floor = 100 * bits_net.cost(bits_net.space.smallest())["bitops"] / FP32_BITOPS


def verdict(baseline, treatment):
    """The ledger's non-inferiority verdict (its `supernet-ni` row: margin, effect of interest), paired by seed."""
    v = study.no_degradation(baseline, treatment)
    return "NOT TESTED (one seed)" if v is None else v.status.upper()


def change(c):
    ci = "" if c.ci_low != c.ci_low else (f" (95% CI {100 * c.ci_low:+.2f} to {100 * c.ci_high:+.2f}, "
                                         f"paired t p = {c.p:.2g})")
    return f"{100 * c.mean_diff:+.2f} pp{ci}"


cmp = stats.compare_paired(fp32.loc[list(SEEDS)], at5["test_accuracy"].loc[list(SEEDS)], setting="5% budget")
print("CLAIM CHECK: ≈95% BitOPs reduction without degradation (vit-tiny on digits, per-bit LoRA supernet, "
      f"{'FULL study' if FULL else 'quick version'}, seeds {SEEDS} measured here)")
print(f"  Subnet searched under 5% of FP32: {at5['bitops % FP32'].mean():.2f}% of FP32 BitOPs = a "
      f"{red_fp32:.1f}% reduction vs FP32 and {red_w8a8:.1f}% vs W8A8 ({', '.join(at5['label'])}).")
print(f"  Test accuracy: FP32 {100 * fp32.mean():.1f}%, W8A8 PTQ {100 * w8a8.mean():.1f}%, searched subnet "
      f"{100 * at5['test_accuracy'].mean():.1f}%; change vs FP32 {change(cmp)}.")
RESULTS_DIR = Path(craftlab.__file__).resolve().parents[1] / "benchmarks" / "results"
BENCH, PICKS = RESULTS_DIR / "supernet.csv", RESULTS_DIR / "supernet_picks.csv"
if len(SEEDS) < 2 and BENCH.exists() and PICKS.exists():
    bench, picks = pd.read_csv(BENCH), pd.read_csv(PICKS)
    b_fp32 = bench[(bench["model"] == "vit-tiny") & (bench["split"] == "test") & (bench["kind"] == "FP32")]
    b_fp32 = b_fp32.set_index("seed")
    b_at5 = picks[(picks["model"] == "vit-tiny") & (picks["budget_pct"].round(3) == 5.0)].set_index("seed")
    b_cmp = stats.compare_paired(b_fp32["accuracy"], b_at5.loc[b_fp32.index, "pick_test"], setting="5% budget")
    print(f"  From the benchmark run (python -m benchmarks.bench_supernet, {len(b_fp32)} seeds "
          f"{tuple(b_fp32.index)}, benchmarks/results/supernet_picks.csv): the pick under 5% at "
          f"{b_at5['pick_pct'].mean():.2f}% of FP32 BitOPs ({', '.join(b_at5['pick'])}; attention matmuls counted), "
          f"test accuracy FP32 {100 * b_fp32['accuracy'].mean():.1f}%, pick {100 * b_at5['pick_test'].mean():.1f}%; "
          f"change vs FP32 {change(b_cmp)}.")
    print(f"  Verdict vs FP32 (non-inferiority, 1 pp margin; the benchmark's {len(b_fp32)} seeds): "
          f"{verdict(b_fp32['accuracy'], b_at5.loc[b_fp32.index, 'pick_test'])}.")
else:
    print(f"  Verdict vs FP32 (non-inferiority, 1 pp margin; seeds {SEEDS}): "
          f"{verdict(fp32.loc[list(SEEDS)], at5['test_accuracy'].loc[list(SEEDS)])}"
          + ("" if len(SEEDS) > 1 else "; run python -m benchmarks.bench_supernet or set FULL = True for 3 seeds")
          + ".")
within = picked[picked["val_accuracy"] >= picked["seed"].map(
    {s: craftlab.evaluate(bases[s], data.val)["accuracy"] for s in SEEDS}) - 0.01]
best = within.loc[within.groupby("seed")["bitops % FP32"].idxmin()]
print(f"  Largest reduction within 1 pp of FP32 on validation (seeds {SEEDS}): "
      f"{100 - best['bitops % FP32'].mean():.1f}% vs FP32 "
      f"(per seed {', '.join(f'{100 - v:.1f}%' for v in best['bitops % FP32'])}), test accuracy "
      f"{100 * best['test_accuracy'].mean():.1f}% vs FP32 {100 * fp32.mean():.1f}%.")
print(f"  Vs W8A8 the claim cannot hold here: the smallest subnet (all W2A4) is {floor:.2f}% of FP32, i.e. at most "
      f"a {100 * (1 - floor / (100 * W8A8_BITOPS / FP32_BITOPS)):.0f}% reduction vs W8A8, because the FP32 patch "
      "embedding and head are not searched (the paper's 95% must be relative to a float model).")

# %% [markdown]
# **Reading it.** The measured reduction is relative to FP32, the only reference under which 95% is reachable
# here. Two things make this small setting easier than the paper's: `vit-tiny` on `digits` is robust to
# quantization (uniform PTQ at W4A4 already loses little), so much of the BitOPs reduction comes for free once
# the weights are at 4 bits or fewer; and the accuracy differences that matter are a few test images. The
# operator study, the LoRA/progressive comparisons and the memory accounting are the parts that carry over.
#
# ## Try this
#
# 1. `study.standin_memory(batch=8)`: how do activations, and so LoRA's saving, scale with the batch?
# 2. Build a supernet of the CrAFT arm (`SupernetSpec(base_sam_rho=0.05)`): does a flat fine-tune make a better
#    supernet?
# 3. Search the structural operators together with bits (`SupernetSpec(depths=(3, 4), mlp_ratios=(1.5, 2.0))`):
#    does the Pareto front move below 3% of FP32?
# 4. From a shell: `craftlab supernet search --budget 4% --budget 3%` prints the chosen bits per layer.

# %%
print(f"notebook ran in {time.perf_counter() - T0:.0f} s wall, {time.process_time() - C0:.0f} s CPU in this kernel")


# %% [markdown]
# ## The claims ledger
#
# The pre-registered test of the supernet's claim:
# one primary endpoint per claim (fixed before the run, where the method has something to fix), seeds
# chosen for 80 % power from a pilot, one verdict definition for every paper
# (`craftlab.analysis.ledger`, `craftlab.analysis.power.endpoint_verdict`). The lines below are read from
# `benchmarks/results/claims.csv` (`python -m benchmarks.run claims`); `ledger.live_line(claim_id, baseline,
# treatment)` computes the same verdict from your own paired values.

# %%
from craftlab.analysis import ledger  # noqa: E402

for paper in ('Supernet',):
    for line in ledger.paper_lines(paper):
        print(line)
