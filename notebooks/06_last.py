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
# # 06 · LAST: side-tuning a frozen ViT, and K hyper-parameters for the price of one
#
# Fine-tuning methods such as LoRA train few parameters, but their parameters sit *inside* the backbone, so
# every training step back-propagates through it and must keep its activations. **LAST** (Tang, Fu, Zhu, Wu 2024,
# *Low-rank Attention Side-Tuning*, arXiv 2402.04009) freezes the backbone's parameters **and its outputs**: the
# backbone is a feature extractor run without autograd, and only a small **side network** of low-rank
# self-attention (LSA) modules trains on its intermediate features.
#
# **The claims we check at the end** (LAST's abstract): LAST needs roughly **30 % of the training memory** and
# **60 % of the training time** of PEFT methods, at **higher accuracy**; and since the backbone's output does not
# depend on the side network, one backbone pass can feed **many side networks at once** (a hyper-parameter
# search in one go).
#
# **What is a reconstruction.** LAST publishes no code. What its abstract and reviews state: m LSA modules, one
# every g backbone blocks, no FFN; LSA projects d → r ≪ d, attends in r dims and projects back; side block i reads
# the previous side output u_{i−1} and the backbone's z_i; the output is "bias-corrected" as u_m − Σ_{i<m} z_i.
# CraftLab's choices where nothing is published: a pre-LayerNorm and separate q/k/v maps inside LSA, a zero-initialised
# up-projection, and the residual recurrence u_i = h_i + LSA(h_i) with h_i = u_{i−1} + z_i (all in
# `craftlab.adapt.side`, easy to change).

# %%
import copy
import time

import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

import craftlab
from craftlab import stats, widgets
from craftlab.adapt import methods, recipes, steps, taps
from craftlab.studies import adapt as study

STATIC = widgets.static_figures()  # a PNG beside every plotly figure: the executed notebook shows them anywhere
T0, C0 = time.perf_counter(), time.process_time()
pd.set_option("display.precision", 3)
SEEDS, EPOCHS = [0, 1, 2], 8
data = craftlab.load_data("digits")
model = craftlab.create_model("vit-tiny", num_classes=data.num_classes)
x, y = next(iter(data.loader("train", shuffle=False)))
print(data)
n_params = sum(p.numel() for p in model.parameters())
print(f"vit-tiny: {taps.depth(model)} blocks, width d = {model.embed_dim}, {n_params:,} parameters")

# %% [markdown]
# ## 1. Feature taps: what the side network reads
#
# Call z_0 the token sequence entering the first block (patch embedding, CLS token, position embedding) and z_i
# the output of block i. From scratch, that is timm's embedding steps and then the blocks one by one, all under
# `torch.no_grad()`: nothing the backbone computes is kept for a backward pass. `taps.tap_batch` gets the same
# tensors from timm's own `forward_intermediates` in one forward pass (and the pre-logits feature a linear probe
# reads).


# %%
def taps_from_scratch(vit, images):
    with torch.no_grad():
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))  # z_0: 16 patch tokens + CLS, width 64
        zs = [h]
        for block in vit.blocks:
            h = block(h)
            zs.append(h)
    return torch.stack(zs, 1)  # (B, L + 1, N, d)


mine = taps_from_scratch(model, x)
z, pooled = taps.tap_batch(model, x)
print(f"taps: {tuple(z.shape)} (batch, z_0..z_L, tokens, d); max |from scratch - tap_batch| = "
      f"{(mine - z).abs().max():.1e}; grad_fn: {z.grad_fn}")
assert torch.allclose(mine, z, atol=1e-6)

norms = z.norm(dim=-1).mean(0)  # mean token norm per tap and token
go.Figure(go.Heatmap(z=norms.T, x=[f"z_{i}" for i in range(len(norms))], y=["CLS"] + [f"patch {j}" for j in range(16)],
                     colorbar_title="‖token‖"),
          layout=dict(title="mean token norm of each tapped feature (64 training images)", height=430))

# %% [markdown]
# The residual stream grows block by block, the CLS token differently from the patches: the side network reads
# features of quite different scales, which is one reason each LSA module starts with a LayerNorm.
#
# ## 2. The side network, from scratch
#
# One LSA module: LayerNorm, project d → r, self-attention in r dims, project r → d. LAST's recurrence with m side
# blocks on z_0, z_g, …, z_L (here g = 2, m = 2), then the bias correction and a head. We write it with the
# library's parameters and check the two agree.

# %%
t_last, _ = recipes.side_spec(model, "last", gap=2)
net = recipes.build_side(model, "last", t_last, 10, rank=16)
for p in net.parameters():
    torch.nn.init.normal_(p, std=0.05)  # move every module off its zero start, so the check sees something


def lsa_from_scratch(mod, h):
    r = mod.down.out_features
    q, k, v = mod.qkv(mod.down(F.layer_norm(h, h.shape[-1:], mod.norm.weight, mod.norm.bias))).chunk(3, -1)
    return mod.up(torch.softmax(q @ k.transpose(-2, -1) / r**0.5, -1) @ v)


def last_from_scratch(net, zs):
    u = zs[:, 0]  # u_0 = z_0
    for i, block in enumerate(net.blocks, start=1):
        h = u + zs[:, i]  # the previous side output plus the backbone's z_i
        u = h + lsa_from_scratch(block[0], h)
    out = u - zs[:, :-1].sum(1)  # bias correction: u_m - (z_0 + ... + z_{m-1})
    return net.head(F.layer_norm(out, out.shape[-1:], net.norm.weight, net.norm.bias)[:, 0])


zs = z[:, list(t_last)]
print(f"max |from scratch - LASTSideNet| = {(last_from_scratch(net, zs) - net(zs)).abs().max():.1e}")
assert torch.allclose(last_from_scratch(net, zs), net(zs), atol=1e-5)

# %% [markdown]
# Without any LSA (its up-projection starts at zero), the corrected output is exactly z_L: a fresh LAST *is* the
# linear probe on the backbone's final features, and training adds task-specific corrections to it. Now train it
# with the library, one side block per backbone block (g = 1, m = 4), beside a linear probe.

# %%
t = time.perf_counter()
last = recipes.adapt_model(model, data, "last", epochs=EPOCHS, gap=1)
probe = recipes.adapt_model(model, data, "linear", epochs=EPOCHS, cache="memory")
print(f"LAST: test accuracy {last.metrics['test_accuracy']:.1%}, {last.trainable_params:,} trainable parameters, "
      f"{last.time_per_epoch_s:.2f} s/epoch; linear probe {probe.metrics['test_accuracy']:.1%} "
      f"({time.perf_counter() - t:.0f} s)")
assert all(p.grad is None for p in model.parameters())  # the backbone never got a gradient
fig = go.Figure(layout=dict(title="validation accuracy per epoch", height=360, xaxis_title="epoch",
                            yaxis=dict(title="accuracy", tickformat=".0%")))
for name, res in [("LAST (g=1, r=16)", last), ("linear probe", probe)]:
    fig.add_scatter(x=[h["epoch"] for h in res.history], y=[h["val_accuracy"] for h in res.history], name=name)
fig

# %% [markdown]
# ## 3. Memory: what a training step holds
#
# Back-propagation keeps the tensors each operation saved for its backward pass. PyTorch lets us see them:
# `torch.autograd.graph.saved_tensors_hooks` calls a function on every tensor saved. From scratch, count the
# bytes (each storage once, parameters left out: they are resident anyway) for full fine-tuning and for LAST.


# %%
def saved_bytes_from_scratch(loss_fn, params):
    skip, seen = {p.untyped_storage().data_ptr() for p in params}, {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn()
    return sum(seen.values())


full_copy = copy.deepcopy(model).train()
full_saved = saved_bytes_from_scratch(lambda: F.cross_entropy(full_copy(x), y), full_copy.parameters())
last_net = last.model.side.train()
last_saved = saved_bytes_from_scratch(lambda: F.cross_entropy(last_net(taps.tap_batch(model, x)[0]), y),
                                      last_net.parameters())
lib = steps.training_step(model, x, y, "last", gap=1).memory()
print(f"saved for backward, batch of {len(x)}: full fine-tuning {full_saved / 1e6:.2f} MB, "
      f"LAST {last_saved / 1e6:.2f} MB (library: {lib.saved_bytes / 1e6:.2f} MB)")
assert lib.saved_bytes == last_saved

# %% [markdown]
# Training also holds the gradients and the optimizer's state (AdamW: two moments per trainable parameter).
# `steps.training_step(...).memory()` counts all three. On vit-tiny, with 64 images of 17 tokens, activations are
# small; the papers work with ViT-B/16 at 224 px (197 tokens, width 768), where they dominate. We measure a
# **ViT-S-sized stand-in** too (timm `vit_small_patch16_224`, random weights: memory does not depend on them;
# batch 2, so it stays quick).

# %%
LORA, LAST = methods.LORA, methods.LAST  # the labels every table of the project uses (methods.ARMS)
MEM_ARMS = {k: methods.ARMS[k] for k in ("linear probe", LORA, "full", LAST)}
mem_rows = []
stand_in = craftlab.build_model("vit_small_patch16_224", num_classes=10)
xs, ys = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
for where, (m, xb, yb) in {"vit-tiny, batch 64": (model, x, y), "ViT-S stand-in, batch 2": (stand_in, xs, ys)}.items():
    for kw in MEM_ARMS.values():
        kw = dict(kw)
        method = kw.pop("method")
        arm = recipes.configure(method, **kw).label(taps.depth(m))  # labelled for this backbone's depth
        step = steps.training_step(m, xb, yb, method, num_classes=10, **kw)
        mem = step.memory()
        t = time.perf_counter()
        step.run()
        mem_rows.append({"model": where, "arm": arm, "method": method, "saved": mem.saved_bytes / 1e6,
                         "gradients": mem.grad_bytes / 1e6,
                         "optimizer": mem.optimizer_bytes / 1e6, "total_MB": mem.total_bytes / 1e6,
                         "step_s": time.perf_counter() - t, "trainable": mem.trainable_params})
mem_df = pd.DataFrame(mem_rows)
fig = make_subplots(1, 2, subplot_titles=list(dict.fromkeys(mem_df["model"])))
for col, (_, part) in enumerate(mem_df.groupby("model", sort=False), start=1):
    for kind, color in [("saved", "#636efa"), ("gradients", "#ef553b"), ("optimizer", "#00cc96")]:
        fig.add_bar(x=part["arm"], y=part[kind], name=kind, marker_color=color, showlegend=col == 1, row=1, col=col)
fig.update_layout(barmode="stack", height=400, title="what one training step holds (MB)")
fig.update_yaxes(title_text="MB")
fig

# %% [markdown]
# ## 4. Accuracy and time over seeds, same budget
#
# Every method trains for the same epochs, in the same data order, with AdamW on the same cosine schedule; each at
# its own learning rate (chosen on the validation split). LAST runs the frozen backbone on every batch (no feature
# cache), as LoRA and full fine-tuning do, so the time per epoch compares like with like.

# %%
t = time.perf_counter()
arms = {k: methods.ARMS[k] for k in ("linear probe", LORA, "full", LAST)}
df = study.compare_methods(model, data, arms=arms, seeds=SEEDS, epochs=EPOCHS)
print(f"{len(df)} runs in {time.perf_counter() - t:.0f} s")
summary = df.groupby("arm", sort=False).agg(test_accuracy=("test_accuracy", "mean"), sd=("test_accuracy", "std"),
                                            params=("trainable_params", "first"),
                                            memory_MB=("memory_bytes", lambda v: v.iloc[0] / 1e6),
                                            s_per_epoch=("time_per_epoch_s", "mean"))
summary

# %%
fig = go.Figure(layout=dict(title="accuracy vs training time (marker area ∝ training memory)", height=420,
                            xaxis_title="seconds per epoch", yaxis=dict(title="test accuracy", tickformat=".0%")))
for arm, r in summary.iterrows():
    size = 8 + 40 * (r.memory_MB / summary.memory_MB.max()) ** 0.5
    fig.add_scatter(x=[r.s_per_epoch], y=[r.test_accuracy], name=arm, mode="markers+text", text=[arm],
                    textposition="top center", marker=dict(size=size), error_y=dict(type="data", array=[r.sd]))
fig

# %% [markdown]
# ## 5. K hyper-parameters at once
#
# The backbone's features do not depend on the side network, so one backbone pass per batch can feed K side
# networks. From scratch: stack K copies' parameters with `torch.func.stack_module_state` and run them as one with
# `torch.func.vmap` (the batch is shared, each network has its own weights).

# %%
from torch.func import functional_call, stack_module_state, vmap  # noqa: E402

nets = [recipes.build_side(model, "last", t_last, 10, rank=16, seed=s) for s in range(4)]
params, buffers = stack_module_state(nets)
skeleton = copy.deepcopy(nets[0]).to("meta")
logits = vmap(lambda p, b, inp: functional_call(skeleton, (p, b), (inp,)), in_dims=(0, 0, None))(params, buffers, zs)
print(f"4 networks, one call: logits {tuple(logits.shape)}; max |vmap - each alone| = "
      f"{max((logits[i] - nets[i](zs)).abs().max().item() for i in range(4)):.1e}")

# %% [markdown]
# `recipes.adapt_search` trains K such networks at once, each with its own learning rate, weight decay, rank and
# seed (networks of another rank form their own stack, reading the same batch), with a vectorised AdamW; the result
# equals K separate runs (checked in the tests to 1e-10 in float64). The best is picked on validation.

# %%
t = time.perf_counter()
grid = [{"lr": lr, "rank": r} for lr in (1e-3, 3e-3, 1e-2, 3e-2) for r in (8, 16)]
found = recipes.adapt_search(model, data, grid, "last", epochs=EPOCHS, gap=1)
print(f"K = {len(grid)} side networks in {found.time_s:.0f} s with {found.backbone_passes} backbone passes "
      f"(sequential runs would make {len(grid) * found.backbone_passes}); wall {time.perf_counter() - t:.0f} s")
pivot = found.table.pivot(index="rank", columns="lr", values="val_accuracy")
go.Figure(go.Heatmap(z=pivot.values, x=[f"{c:g}" for c in pivot.columns], y=[f"r={i}" for i in pivot.index],
                     text=pivot.map(lambda v: f"{v:.1%}").values, texttemplate="%{text}", colorbar_title="val acc"),
          layout=dict(title="K-way search: validation accuracy per (rank, lr)", height=330, xaxis_title="peak lr"))

# %%
speed = study.kway_speedup(model, data, ks=(1, 4, 8), epochs=1)
speed

# %%
go.Figure([go.Bar(x=[str(k) for k in speed["K"]], y=speed["sequential_s"], name="K sequential runs"),
           go.Bar(x=[str(k) for k in speed["K"]], y=speed["parallel_s"], name="K-way, one backbone pass per batch")],
          layout=dict(title="wall time of one epoch for K side networks", height=360, xaxis_title="K",
                      yaxis_title="seconds"))

# %% [markdown]
# On a CPU the speed-up stays modest on vit-tiny: its backbone is as cheap as the side networks, and a CPU does K
# networks' arithmetic one after the other whatever the batching. What K-way saves is the backbone's passes (K
# times fewer), which dominate when the backbone is large (the benchmark measures a ViT-B stand-in:
# `benchmarks/results/adapt.md`), and on a GPU, where the K networks really run in parallel.
#
# ## 6. Claim check
#
# Accuracy and time are paired by seed (same data order, same initialisation seed); memory is one deterministic
# measurement per method.

# %% tags=["claim-check"]
acc = stats.compare_arms(df.assign(setting="vit-tiny → digits"), LORA, LAST, value="test_accuracy")
tim = stats.compare_arms(df.assign(setting="vit-tiny → digits"), LORA, LAST, value="time_per_epoch_s",
                         higher_is_better=False)
mem = summary["memory_MB"]
big = mem_df[mem_df["model"].str.startswith("ViT-S")].set_index("method")["total_MB"]
mem_ratio, big_ratio = mem[LAST] / mem[LORA], big["last"] / big["lora"]
time_ratio = summary.loc[LAST, "s_per_epoch"] / summary.loc[LORA, "s_per_epoch"]
print("CLAIM CHECK (LAST, Tang et al. 2024, against LoRA as the PEFT method)")
print(f"1. ≈30% of PEFT's training memory: LAST holds {mem_ratio:.0%} of LoRA's on vit-tiny "
      f"({mem[LAST]:.2f} vs {mem[LORA]:.2f} MB) and {big_ratio:.0%} on the ViT-S stand-in "
      f"({big['last']:.1f} vs {big['lora']:.1f} MB): "
      + ("holds (below 50% on both)." if max(mem_ratio, big_ratio) < 0.5 else "does not hold here."))
print(f"2. ≈60% of PEFT's training time: LAST's epoch takes {time_ratio:.0%} of LoRA's "
      f"({summary.loc[LAST, 's_per_epoch']:.2f} vs {summary.loc[LORA, 's_per_epoch']:.2f} s).")
print(stats.claim_verdict(tim, claim="LAST trains faster per epoch than LoRA", scale=1.0, unit=" s").text)
print("3. Higher accuracy than PEFT:")
print(stats.claim_verdict(acc, claim="LAST is more accurate than LoRA", scale=100.0, unit=" pp").text)
print(f"   Means: LAST {summary.loc[LAST, 'test_accuracy']:.1%}, LoRA {summary.loc[LORA, 'test_accuracy']:.1%}, "
      f"full fine-tuning {summary.loc['full', 'test_accuracy']:.1%}, linear probe "
      f"{summary.loc['linear probe', 'test_accuracy']:.1%}.")
print(f"4. Parallel across hyper-parameters: {len(grid)} configurations trained with {found.backbone_passes} backbone "
      f"passes instead of {len(grid) * found.backbone_passes}; K = 8 ran {speed['speedup'].iloc[-1]:.1f}x faster "
      "than 8 sequential runs on this CPU.")

# %% [markdown]
# **Reading it.** The verdicts come from this run. The papers measure GPU memory and time with ViT-B/16 on VTAB-1K;
# here a 139 k-parameter ViT pretrained on 5,000 MNIST digits adapts to 8×8 digits on a CPU, so the memory ratio
# depends on how much of the step is activations (compare vit-tiny with the stand-in), and the time ratio on how
# expensive the backbone is relative to the side network. The accuracy claim depends on the learning rates: each
# method uses the one chosen on validation (`recipes.DEFAULT_LR`) at this budget; section 7 tunes each method's
# rate again and follows accuracy along the epochs and the wall time.
#
# ## 7. Accuracy against epochs and wall time, each learning rate tuned on validation
#
# One budget with hand-set learning rates can favour the method whose rate happens to suit that budget.
# `studies.adapt.adapt_curves` trains each arm (LoRA, LAST, full fine-tuning) at its default rate ÷3, ×1 and ×3
# (a rate chosen at the edge of its grid gets one more beyond it: `widen`), picks each arm's rate by the mean
# validation accuracy at the last epoch (the test split chooses nothing), and records validation and test
# accuracy after every epoch with the cumulative training time (evaluation excluded). The benchmark
# (`python -m benchmarks.run adapt_curves`) wrote its runs to `benchmarks/results/adapt_curves.csv`; the next
# cell reads them. `FULL = True` trains them all here with the benchmark's settings (tens of minutes on one
# CPU thread).

# %%
from craftlab.analysis.ledger import results_file  # noqa: E402

FULL = False  # True: train every arm × rate × seed here (the benchmark's settings) instead of reading its table
curve_csv = None if FULL else results_file("adapt_curves.csv")
if curve_csv is not None:
    cv = study.summarize(pd.read_csv(curve_csv))
    print(f"read {cv.runs.groupby(['arm', 'lr', 'seed']).ngroups} runs of {cv.runs['epoch'].max()} epochs from "
          f"{curve_csv.name} (FULL = True recomputes them)")
else:  # FULL, or an install without the benchmark's table (then a quick version: one seed, 4 epochs)
    c_seeds, c_epochs = ([0, 1, 2], 16) if FULL else ([0], 4)
    cv = study.adapt_curves(model, data, seeds=c_seeds, epochs=c_epochs, widen=2, progress=True)
cv.grid

# %%
curve_fig = make_subplots(rows=1, cols=2, subplot_titles=("by epoch", "by cumulative training time"))
for (arm, c), color in zip(cv.curves.groupby("arm", sort=False), ("#636efa", "#ef553b", "#00cc96")):
    name = f"{arm}, lr {c['lr'].iloc[0]:g}"
    band = dict(type="data", array=100 * c["test_sd"].fillna(0), visible=True)
    curve_fig.add_trace(go.Scatter(x=c["epoch"], y=100 * c["test_accuracy"], error_y=band, name=name,
                                   legendgroup=arm, mode="lines+markers", line_color=color), 1, 1)
    curve_fig.add_trace(go.Scatter(x=c["cum_time_s"], y=100 * c["test_accuracy"], name=name, legendgroup=arm,
                                   showlegend=False, mode="lines+markers", line_color=color), 1, 2)
curve_fig.update_xaxes(title_text="epoch", row=1, col=1)
curve_fig.update_xaxes(title_text="training seconds (mean over seeds, one thread)", row=1, col=2)
curve_fig.update_yaxes(title_text="test accuracy (%), mean ± sd over seeds", row=1, col=1)
curve_fig.update_layout(height=430, title=f"tuned learning rates, {cv.curves['seeds'].max()} seeds")
curve_fig

# %%
print(study.reading(cv))

# %% [markdown]
# **Reading it.** The lines above are computed from the table; they are the answer to "does LAST beat LoRA once
# both rates are tuned and the budget is not fixed at one point?". The wall-time axis is one CPU thread on a
# shared machine, the curves are a few seeds, and epoch e is a point inside one cosine run over all the epochs
# (not the best e-epoch run). The claims ledger below tests the pre-registered endpoint (8 epochs, the
# benchmark's rates) with the seeds its power rule asks.
#
# ## Try this
#
# 1. `gap=2` (m = 2 side blocks) or `rank=8`: how much accuracy does a smaller side network cost, and what does it
#    save in memory?
# 2. Search weight decay too: add `"weight_decay": wd for wd in (0.0, 0.05, 0.3)` to the grid.
# 3. `methods.ARMS` also has `"full + SAM"` (CrAFT's recipe) and `"MIET"` (notebook 07): add them to `arms`.

# %%
print(f"notebook ran in {time.perf_counter() - T0:.0f} s wall, {time.process_time() - C0:.0f} s CPU in this kernel")


# %% [markdown]
# ## The claims ledger
#
# The pre-registered test of LAST's claim:
# one primary endpoint per claim (fixed before the run, where the method has something to fix), seeds
# chosen for 80 % power from a pilot, one verdict definition for every paper
# (`craftlab.analysis.ledger`, `craftlab.analysis.power.endpoint_verdict`). The lines below are read from
# `benchmarks/results/claims.csv` (`python -m benchmarks.run claims`); `ledger.live_line(claim_id, baseline,
# treatment)` computes the same verdict from your own paired values.

# %%
from craftlab.analysis import ledger  # noqa: E402

for paper in ('LAST',):
    for line in ledger.paper_lines(paper):
        print(line)
