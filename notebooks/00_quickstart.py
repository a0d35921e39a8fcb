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
# # 00 · Quickstart: fine-tune, prune and quantize a model in five minutes
#
# You will fine-tune a small pretrained vision transformer on a new task, compress it two ways
# (one-shot **pruning** and post-training **quantization**), and measure what each costs in accuracy:
# the whole CraftLab loop, on a laptop CPU, in a few minutes.
#
# **The claim we check at the end** (common wisdom of post-training compression: Nagel et al. 2021,
# *A White Paper on Neural Network Quantization*; Sun et al. 2023, *Wanda*): 8-bit weights and
# activations (W8A8) are essentially free; 4-bit activations are where quantization starts to hurt;
# one-shot pruning of half the weights costs little, and much more beyond that.
#
# **Install** (from a clone of the repository):
#
# ```bash
# make demo                         # or: pip install -e ".[notebooks]"
# .venv/bin/jupyter lab notebooks/  # open this notebook
# ```
#
# Everything below runs offline. Fine-tuned models are cached under `$CRAFTLAB_HOME` (default
# `~/.cache/craftlab`), so the next notebooks reuse them instead of training again.

# %%
import copy
import time

import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

import craftlab
from craftlab import cache, figures, widgets
from craftlab import experiments as ex
from craftlab.threads import configure_threads

THREADS = configure_threads()  # THE thread policy: CRAFTLAB_THREADS, else 1 for the tiny zoo models
STATIC = widgets.static_figures()  # a PNG beside every plotly figure: the executed notebook shows them anywhere
T0, C0 = time.perf_counter(), time.process_time()
pd.set_option("display.precision", 3)
print(f"craftlab {craftlab.__version__}; cache: {cache.home()}; torch threads: {THREADS}")

# %% [markdown]
# ## 1. Data and a pretrained "foundation" model
#
# The target task is sklearn's `digits` (1,797 handwritten digits, 8×8 pixels upsampled to 28×28). The
# model is `vit-tiny`, a real timm `VisionTransformer` (4 blocks, width 64) that CraftLab pretrained on a
# different digit set (`mnist5k`); `create_model` loads those weights and puts a fresh 10-class head on it.
#
# *Try this:* `craftlab.zoo_names()` lists the offline models; `print(model)` shows the timm modules that
# pruning and quantization will target (every `Linear`/`Conv2d` except the patch embedding and the head).

# %%
data = craftlab.load_data("digits")
model = craftlab.create_model("vit-tiny", num_classes=data.num_classes)
x, _ = next(iter(data.test))
print(data)
print({k: v for k, v in craftlab.model_stats(model, x[:1]).items() if k in ("params", "size_mb", "macs")})
print("accuracy before fine-tuning (random head):", round(craftlab.evaluate(model, data.test)["accuracy"], 3))

# %% [markdown]
# ## 2. Fine-tune: plain AdamW, and AdamW + SAM (the CrAFT recipe)
#
# `craftlab.finetune(model, data, epochs=8)` fine-tunes a copy of the model with AdamW on a cosine
# schedule; `sam_rho=0.05` wraps the same optimizer in sharpness-aware minimization (SAM), which is all
# the CrAFT recipe changes. Here we go through the run cache: `get_run(RunSpec(...))` calls `finetune`
# the first time and returns the saved checkpoint afterwards, in this and every other notebook.
#
# *Try this:* call `craftlab.finetune(model, data, epochs=2)` directly and look at `.history`.

# %%
t = time.perf_counter()
plain_spec = craftlab.RunSpec(model="vit-tiny", data="digits", epochs=8, seed=0)
craft_spec = craftlab.RunSpec(model="vit-tiny", data="digits", epochs=8, sam_rho=0.05, seed=0)
plain = craftlab.load_checkpoint(craftlab.get_run(plain_spec, progress=False))
craft = craftlab.load_checkpoint(craftlab.get_run(craft_spec, progress=False))
print(f"two fine-tuned models ready in {time.perf_counter() - t:.0f} s (cached runs take well under a second)")
pd.DataFrame(plain.craftlab_meta["history"])[["epoch", "train_loss", "val_accuracy", "lr", "time_s"]]

# %% [markdown]
# ## 3. Compress: prune, quantize, evaluate
#
# * `prune(model, 0.5, method="wanda", calib=...)` zeroes the half of each layer's weights with the
#   lowest |W|·‖X‖ score (Wanda; `method="magnitude"` uses |W| alone). The stem and the head stay dense.
# * `quantize(model, w_bits=4, a_bits=4, calib=...)` rounds weights (per output channel) and layer
#   inputs (per tensor, ranges calibrated on 128 training images) to 4-bit integer grids.
#
# Both return a new model; the original is untouched.
#
# *Try this:* `craftlab.sparsity_report(pruned)["layers"]` shows the sparsity per layer; compare
# `craftlab.model_stats(w4a4, x[:1])["bitops"]` with the FP32 model's.

# %%
pruned = craftlab.prune(plain, 0.5, method="wanda", calib=data.calib)
w8a8 = craftlab.quantize(plain, w_bits=8, a_bits=8, calib=data.calib)
w4a4 = craftlab.quantize(plain, w_bits=4, a_bits=4, calib=data.calib)
print(f"measured sparsity of the pruned layers: {craftlab.sparsity_report(pruned)['overall']:.1%}")
for name, m in [("FP32", plain), ("wanda 50%", pruned), ("W8A8", w8a8), ("W4A4", w4a4)]:
    acc = craftlab.evaluate(m, data.test)["accuracy"]
    size = craftlab.model_stats(m)["size_mb"]
    print(f"{name:>10}: test accuracy {acc:.1%}, weights {size:.3f} MB")

# %% [markdown]
# The same measurements for both models in one tidy table: `craftlab.sweep` takes models and a list of
# settings and returns a pandas DataFrame (one row per model × setting).

# %%
SETTINGS = ["FP32", "magnitude 50%", "wanda 50%", "wanda 70%", "W8A8", "W4A8", "W4A4"]
table = craftlab.sweep({"AdamW": plain, "SAM ρ=0.05": craft}, data,
                       settings=[ex.parse_setting(s) for s in SETTINGS], progress=False)
table["setting"] = SETTINGS * 2
table.pivot(index="setting", columns="model", values="accuracy").loc[SETTINGS]

# %% [markdown]
# ## 4. Under the hood: pruning and quantization from scratch
#
# Both compressions are a few lines of PyTorch. Here is each one written from scratch, then the
# library call that does the same with all the care (tie-breaking, N:M patterns, Wanda's calibrated
# scores, range estimators, activation grids), and a check that the two agree exactly.
#
# ### Global magnitude pruning
#
# Rank every targeted weight of the model together by $|w|$ and zero the smallest fraction $s$ of
# them: **one threshold for the whole model** (the $k$-th smallest $|w|$, $k = s \cdot N$), found with
# `torch.kthvalue`. The targets are those of `craftlab.prune`: every `Linear`/`Conv2d` except the stem
# (the patch embedding, first) and the classifier head (last). `method="magnitude"` ranks globally by
# default (`scope="global"`).


# %%
def magnitude_prune_from_scratch(model, sparsity):
    model = copy.deepcopy(model)  # the model passed in stays dense
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    layers = [(n, m) for n, m in layers[1:] if m is not model.get_classifier()]  # not the stem, not the head
    scores = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])  # all targeted |w| in one vector
    k = round(sparsity * scores.numel())
    threshold = torch.kthvalue(scores, k).values  # the k-th smallest |w| in the whole model
    with torch.no_grad():
        for _, m in layers:
            m.weight[m.weight.abs() <= threshold] = 0.0
    return model, [n for n, _ in layers], threshold


S = 0.5
mine, mine_layers, threshold = magnitude_prune_from_scratch(plain, S)
lib = craftlab.prune(plain, S, method="magnitude")  # scope="global" is magnitude's default
assert mine_layers == lib.craftlab_compression["prune"]["layers"], "not the layers craftlab.prune targets"
mine_mods, lib_mods = dict(mine.named_modules()), dict(lib.named_modules())
differ = sum(int(((mine_mods[n].weight == 0) != (lib_mods[n].weight == 0)).sum()) for n in mine_layers)
total = sum(mine_mods[n].weight.numel() for n in mine_layers)
same = all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), lib.state_dict().values(), strict=True))
print(f"threshold |w| <= {threshold:.3e} over {total} targeted weights in {len(mine_layers)} layers")
print(f"from scratch vs craftlab.prune: {differ} of {total} mask entries differ; every tensor identical: {same}")
assert differ == 0 and same

report = craftlab.sparsity_report(lib)["layers"]
go.Figure(go.Bar(x=list(report), y=[r["sparsity"] for r in report.values()]),
          layout=dict(title=f"global magnitude pruning at {S:.0%}: sparsity per layer", height=380,
                      yaxis=dict(title="fraction of weights zeroed", tickformat=".0%"),
                      margin=dict(b=140)))

# %% [markdown]
# One global threshold prunes the layers unevenly: a layer whose weights are small overall loses more
# than half of them, one with larger weights less (here the MLP layers lose more than the attention
# layers), and the stem and the head (0 %) are never touched. `scope="layer"` gives every layer the same
# 50 %; `method="wanda"` (row scope) replaces $|w|$ by $|w| \cdot \|X\|$, so a small weight that
# multiplies a large input survives.
# (`<= threshold` would zero more than $k$ weights if several tied at the threshold; `craftlab.prune`
# sorts, and breaks ties by position, so it zeroes exactly $k$.)
#
# ### Uniform fake quantization, per output channel
#
# Each output channel (row) $r$ of a weight gets its own grid: a scale $s_r$ and an integer zero point
# $z_r$ from the row's range $[\min(w_r, 0), \max(w_r, 0)]$, then
# $\hat w = (\operatorname{clamp}(\operatorname{round}(w/s) + z,\ q_{\min}, q_{\max}) - z)\cdot s$.
# *Symmetric*: $q \in [-2^{b-1}, 2^{b-1}-1]$, $z = 0$, $s = \max|w_r| / (2^{b-1}-1)$.
# *Asymmetric*: $q \in [0, 2^b-1]$, $s = (\max - \min)/(2^b - 1)$, $z = \operatorname{round}(-\min/s)$,
# so 0 is exactly on the grid. `round` is round-half-to-even and $w/s$ is computed as $w \cdot (1/s)$,
# the convention of `torch.fake_quantize_per_channel_affine` that `craftlab.quant.quantize_tensor` follows.


# %%
def fake_quant_from_scratch(w, bits, symmetric=True):
    rows = w.detach().flatten(1)  # one row per output channel
    lo, hi = rows.amin(1).clamp(max=0), rows.amax(1).clamp(min=0)  # each row's range, widened to include 0
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale, zero = torch.maximum(-lo, hi) / qmax, torch.zeros_like(lo)
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = (hi - lo) / (qmax - qmin)
        zero = torch.round(-lo / scale)
    scale, zero = scale.view(-1, *[1] * (w.ndim - 1)), zero.view(-1, *[1] * (w.ndim - 1))
    q = torch.clamp(torch.round(w.detach() * (1 / scale)) + zero, qmin, qmax)  # the integers
    return (q - zero) * scale


LAYER = "blocks.0.mlp.fc1"
w = plain.get_submodule(LAYER).weight.detach()
for bits in (8, 4):
    for symmetric in (True, False):
        mine_q = fake_quant_from_scratch(w, bits, symmetric)
        lib_q = craftlab.quant.quantize_tensor(w, bits, axis=0, symmetric=symmetric)
        print(f"{LAYER}.weight {tuple(w.shape)}, {bits}-bit {'symmetric ' if symmetric else 'asymmetric'}: "
              f"max |from scratch - quantize_tensor| = {(mine_q - lib_q).abs().max():.1e}, "
              f"RMS rounding error {(mine_q - w).pow(2).mean().sqrt():.2e}")
        assert torch.equal(mine_q, lib_q)
w4 = craftlab.quantize(plain, w_bits=4).get_submodule(LAYER).weight.detach()  # the model-level call
print(f"craftlab.quantize(plain, w_bits=4) stores exactly the symmetric 4-bit weights: "
      f"{torch.equal(w4, fake_quant_from_scratch(w, 4))}")

row = w[0]
fig = go.Figure(layout=dict(title=f"4-bit grids of one output channel of {LAYER}", height=380,
                            xaxis_title="weight w", yaxis_title="fake-quantized weight"))
for symmetric in (True, False):
    q_row = fake_quant_from_scratch(w, 4, symmetric)[0]
    fig.add_scatter(x=row, y=q_row, mode="markers", name="symmetric" if symmetric else "asymmetric")
fig

# %% [markdown]
# The staircases are the grids, 16 levels each. The symmetric grid is centred on 0 and spans
# $\pm\max|w_r|$, so the levels on the side the row does not reach as far go unused; the asymmetric one
# spreads its 16 levels over the row's own range $[\min w_r, \max w_r]$ (finer steps) at the price of a
# zero point. `craftlab.quantize` applies the
# symmetric per-channel version to every targeted weight (`w_symmetric=True` by default) and quantizes
# layer inputs with the asymmetric per-tensor version, ranges calibrated on `data.calib`.


# %% [markdown]
# ## 5. Play with it
#
# Pick a pruning method, a sparsity and a bit setting: the figure is recomputed for both models
# (about a second per change). Headless (CI, `nbconvert`) the default figure is drawn once.
#
# *Try this:* which model keeps more accuracy at 70–80 % sparsity? Is the answer the same for
# magnitude and Wanda? Notebook 01 answers it with several seeds.

# %%
def compare(method, sparsity, bits):
    rows = []
    for arm, m in [("AdamW", plain), ("SAM ρ=0.05", craft)]:
        for label in ["FP32", f"{method} {sparsity:.0%}", bits]:
            res = craftlab.compress_and_evaluate(m, data, **ex.compress_kwargs(label))
            rows.append({"arm": arm, "setting": label, "accuracy": res["accuracy"]})
    return figures.accuracy_bar_figure(pd.DataFrame(rows), title="test accuracy after compression")


widgets.interactive_figure(compare, method=["wanda", "magnitude"],
                           sparsity={"options": [0.3, 0.5, 0.6, 0.7, 0.8, 0.9], "value": 0.5, "format": "{:.0%}"},
                           bits=["W8A8", "W6A6", "W4A8", "W4A4", "W3A8"])

# %% [markdown]
# ## 6. Claim check
#
# We compare the numbers just measured (AdamW model, one seed, 359 test images: one image is 0.28
# percentage points) with the claim stated at the top.

# %% tags=["claim-check"]
acc = table[table["model"] == "AdamW"].set_index("setting")["accuracy"]
drop = {s: 100 * (acc["FP32"] - acc[s]) for s in SETTINGS}  # percentage points
one_image = 100 / data.describe()["sizes"]["test"]
checks = [
    ("W8A8 is essentially free (drop <= 1 pp)", drop["W8A8"] <= 1.0, f"drop {drop['W8A8']:+.1f} pp"),
    ("4-bit activations hurt more than 8-bit (W4A4 drop > W4A8 drop + 1 image)",
     drop["W4A4"] > drop["W4A8"] + one_image, f"W4A4 {drop['W4A4']:+.1f} pp vs W4A8 {drop['W4A8']:+.1f} pp"),
    ("50% one-shot Wanda pruning costs little (drop <= 3 pp)", drop["wanda 50%"] <= 3.0,
     f"drop {drop['wanda 50%']:+.1f} pp"),
    ("70% costs much more than 50% (at least twice the drop, and > 1 image more)",
     drop["wanda 70%"] > max(2 * drop["wanda 50%"], drop["wanda 50%"] + one_image),
     f"70%: {drop['wanda 70%']:+.1f} pp vs 50%: {drop['wanda 50%']:+.1f} pp"),
]
print(f"CLAIM CHECK (AdamW, seed 0; FP32 accuracy {100 * acc['FP32']:.1f}%)")
for text, ok, numbers in checks:
    print(f"  [{'holds' if ok else 'FAILS'}] {text}: {numbers}")
held = sum(ok for _, ok, _ in checks)
print(f"Verdict: {held} of {len(checks)} parts of the claim hold on this run"
      + ("." if held == len(checks) else "; see which ones fail above (one seed: rerun with others to be sure)."))

# %% [markdown]
# ## Where to go next
#
# 1. **[01_craft.ipynb](01_craft.ipynb)**: the CrAFT paper's experiment, AdamW vs AdamW + SAM over several
#    seeds, pruning and quantization sweeps with seed bands, loss landscapes, and an honest claim check.
# 2. **[02_sharpness_compressibility.ipynb](02_sharpness_compressibility.ipynb)**: what "sharp" means, how
#    to measure it without being fooled by rescalings, and whether sharpness predicts compressibility.
# 3. The command line does the same in one line each: `craftlab finetune`, `craftlab compress`,
#    `craftlab sweep` (`craftlab --help`).
#
# *Try this:* replace `"vit-tiny"` by `"resnet-tiny"` in the `RunSpec`s (and `create_model`) and run the
# notebook again: is the CNN more or less robust to W4A4 than the ViT?

# %%
print(f"notebook ran in {time.perf_counter() - T0:.0f} s wall, {time.process_time() - C0:.0f} s CPU in this kernel")
