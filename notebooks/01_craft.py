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
# # 01 · CrAFT: compression-aware fine-tuning, tested
#
# **Paper.** J. H. Heo, S. Azizi, A. Fayyazi, M. Pedram, *CrAFT: Compression-Aware Fine-Tuning for
# Efficient Visual Task Adaptation*, arXiv:2305.04526 (2023). Code: `johnheo/craft`.
#
# **The problem.** Foundation models are fine-tuned for a task and then compressed *after training*
# (one-shot pruning, post-training quantization) because compression-aware retraining is expensive.
# Post-training compression of a fine-tuned model loses accuracy.
#
# **The recipe.** "Employ the default fine-tuning schedule along with sharpness minimization": fine-tune
# with SAM instead of the plain optimizer and change nothing else. The claim: the SAM-fine-tuned model
# loses **less accuracy under one-shot pruning and PTQ**, for **negligible extra cost** since only the
# short fine-tuning pays SAM's second gradient.
#
# **This notebook** runs that experiment on the embedded default (`vit-tiny` pretrained on `mnist5k`,
# fine-tuned on `digits`): AdamW vs AdamW + SAM on the same schedule and seeds; magnitude, Wanda and 2:4
# pruning; PTQ from W8A8 down to W4A4 and W3A8; the loss landscapes of both arms; and a claim check
# computed from the numbers it produces.

# %%
import copy
import time

import pandas as pd
import torch

import craftlab
from craftlab import experiments as ex
from craftlab import figures, landscape, plots, sharpness, widgets
from craftlab.threads import configure_threads

configure_threads()  # THE thread policy: CRAFTLAB_THREADS, else 1 for the tiny zoo models
STATIC = widgets.static_figures()  # a PNG beside every plotly figure: the executed notebook shows them anywhere
T0, C0 = time.perf_counter(), time.process_time()
pd.set_option("display.precision", 3)

# %% [markdown]
# ## 1. Sharpness-aware minimization in three lines
#
# SAM (Foret et al., ICLR 2021) minimizes the worst loss in a ball of radius $\rho$ around the weights:
#
# $$\min_w \; \max_{\|\epsilon\|_2 \le \rho} L(w + \epsilon), \qquad
# \hat\epsilon(w) = \rho \, \frac{\nabla L(w)}{\|\nabla L(w)\|_2}, \qquad
# w \leftarrow w - \eta \, \nabla L(w)\big|_{w + \hat\epsilon(w)} .$$
#
# Each step is two forward/backward passes: one to find $\hat\epsilon$ (`first_step`), one at the
# perturbed weights whose gradient the base optimizer applies (`second_step`). `craftlab.SAM` follows
# davda54/sam's API; `craftlab.finetune(..., sam_rho=0.05)` uses it with BatchNorm statistics frozen on
# the second pass. CrAFT's public code uses exactly this (default $\rho = 0.05$).
#
# Why should it help compression? Compression moves the weights: $w \to C(w) = w + \delta$. Near a
# minimum the loss rises by about $\tfrac12 \delta^\top H \delta$, so a flatter minimum (small Hessian $H$)
# should pay less for the same $\delta$. Notebook 02 tests that link directly.
#
# *Try this:* `help(craftlab.SAM)`: the optimizer wraps any base optimizer; `adaptive=True` is ASAM.
#
# ### One SAM step from scratch
#
# The three formulas in code, on one batch: the gradient $g$ at $w$, the ascent step
# $\hat\epsilon = \rho g/\|g\|$ (one norm over *all* parameters), the gradient at $w + \hat\epsilon$,
# back to $w$, and the base optimizer's step with that second gradient. Then `craftlab.SAM` takes the
# same step from the same weights. The base optimizer is SGD with momentum (why not AdamW: below). The
# model is `vit-tiny`, which has no BatchNorm and no dropout, so every forward pass at the same weights
# computes the same function in both versions (on a BatchNorm network, `craftlab.SAM(..., model=net)`
# runs the second pass with the running statistics frozen, which the lines below do not).

# %%
xb, yb = next(iter(craftlab.load_data("digits").train))  # one training batch
net = craftlab.create_model("vit-tiny", num_classes=10).train()  # pretrained body, new head
loss_fn = torch.nn.CrossEntropyLoss()
RHO_STEP, LR, MOMENTUM = 0.05, 0.05, 0.9

by_hand = copy.deepcopy(net)
params = [p for p in by_hand.parameters() if p.requires_grad]
base = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
loss_w = loss_fn(by_hand(xb), yb)
loss_w.backward()  # g = ∇L(w)
with torch.no_grad():
    g_norm = torch.stack([p.grad.norm() for p in params]).norm()  # ‖g‖ over all parameters
    w_saved = [p.clone() for p in params]
    for p in params:
        p.add_(RHO_STEP * p.grad / g_norm)  # w + ε,  ε = ρ g / ‖g‖
by_hand.zero_grad()
loss_w_eps = loss_fn(by_hand(xb), yb)
loss_w_eps.backward()  # g' = ∇L(w + ε)
with torch.no_grad():
    for p, w in zip(params, w_saved):
        p.copy_(w)  # back to w
base.step()  # the base optimizer's step with g'

with_lib = copy.deepcopy(net)
sam = craftlab.SAM([p for p in with_lib.parameters() if p.requires_grad], torch.optim.SGD, rho=RHO_STEP, lr=LR,
                   momentum=MOMENTUM, model=with_lib)


def closure():  # the loss at the perturbed weights (SAM.step calls it once, at w + ε)
    loss = loss_fn(with_lib(xb), yb)
    loss.backward()
    return loss


loss_fn(with_lib(xb), yb).backward()  # gradients at w first (davda54/sam's convention)
sam.step(closure)

plain_step = copy.deepcopy(net)  # for scale: a plain SGD step from the same w
sgd = torch.optim.SGD(plain_step.parameters(), lr=LR, momentum=MOMENTUM)
loss_fn(plain_step(xb), yb).backward()
sgd.step()


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


print(f"L(w) = {loss_w:.4f}, L(w + ε) = {loss_w_eps:.4f}: the ascent raised the loss by {loss_w_eps - loss_w:.4f} "
      f"(first-order prediction ρ‖g‖ = {RHO_STEP * g_norm:.4f})")
print(f"one SAM step moves the weights by up to {max_diff(with_lib, net):.1e}; max |Δw| between")
print(f"  SAM by hand and craftlab.SAM:      {max_diff(by_hand, with_lib):.1e}")
print(f"  SAM and a plain SGD step from w:   {max_diff(with_lib, plain_step):.1e}")
assert max_diff(by_hand, with_lib) < 1e-6

# %% [markdown]
# The hand-written step and `craftlab.SAM` agree to float rounding (they differ only in the order of a
# multiplication and a division in $\rho\, g / \|g\|$), while a plain SGD step from the same weights
# lands elsewhere: SAM moves along the gradient taken at $w + \hat\epsilon$, not at $w$. The ascent
# raised the loss by about $\rho\|g\|$, as the first-order Taylor expansion says: $\hat\epsilon$ is the
# steepest direction, so $L(w + \hat\epsilon)$ approximates the worst loss in the ball.
#
# **Why SGD for this check, when CrAFT uses AdamW?** Adam's first step is about
# $\eta\, g / (|g| + 10^{-8})$, nearly $\eta \operatorname{sign}(g)$: it hides gradient differences where
# $|g|$ is large and blows up float-rounding noise where the gradient is mathematically zero. A ViT has
# such parameters: the attention's key biases (softmax ignores a constant added to all of a query's scores),
# whose gradients are $\sim 10^{-9}$ of rounding noise with a random sign. With AdamW (`lr=1e-3`) the two
# correct implementations above end up to a third of the learning rate apart on those entries.
# `craftlab.finetune(..., sam_rho=ρ)` wraps AdamW in exactly this step, with the same schedule as plain
# AdamW fine-tuning.

# %% [markdown]
# ## 2. The experiment
#
# All parameters are in the next cell. Every (arm, seed) is one cached fine-tuning run: it is trained
# the first time (≈ 8 s for AdamW, ≈ 15 s for SAM on 2 CPU cores) and loaded from the cache afterwards,
# also by notebooks 00 and 02.
#
# *Try this:* `craftlab.list_runs()` lists what is in the cache, with each run's test accuracy.

# %%
MODEL = "vit-tiny"            # try "resnet-tiny"
SEEDS = (0, 1, 2, 3, 4)  # five paired seeds: with 3 a paired t test corrected over 9 settings finds only huge effects
EPOCHS = 8
RHO = 0.05
ARMS = {"AdamW": {}, f"SAM ρ={RHO:g}": {"sam_rho": RHO}}
BASE, CRAFT = list(ARMS)
SPARSITIES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
BITS = ex.DEFAULT_BITS        # (8, 8), (6, 6), (4, 8), (4, 4), (3, 8)
# the settings the claim is checked on, fixed before looking at the results
CLAIM_SETTINGS = ["magnitude 50%", "magnitude 70%", "magnitude 2:4", "wanda 50%", "wanda 70%", "wanda 2:4",
                  "W8A8", "W4A4", "W3A8"]

# %%
runs = ex.run_arms(ARMS, seeds=SEEDS, model=MODEL, epochs=EPOCHS)
data = ex.load_data_for(runs)
runs[["arm", "seed", "test_accuracy", "train_time_s", "cached"]]

# %% [markdown]
# Now compress every fine-tuned model, one shot, no retraining: magnitude and Wanda pruning at each
# sparsity and at 2:4 (two of every four consecutive input weights zeroed, the pattern sparse tensor
# cores accelerate), and PTQ at each bit setting. `sweep_runs` returns one row per (run, setting).

# %%
t = time.perf_counter()
settings = craftlab.settings_grid(methods=("magnitude", "wanda"), sparsities=SPARSITIES, patterns=("2:4",), bits=BITS)
df = ex.sweep_runs(runs, data, settings)
print(f"{len(df)} compressed models evaluated in {time.perf_counter() - t:.0f} s")
summary = df.pivot_table(index="setting", columns="arm", values="accuracy", aggfunc=["mean", "std"], sort=False)
summary

# %% [markdown]
# ## 3. The plots
#
# Accuracy vs sparsity and vs bits, mean over seeds with a ±1 std band. The CrAFT claim predicts the SAM
# curve stays up longer (degrades at higher sparsity / fewer bits) from a similar FP32 starting point.
#
# *Try this:* where do the bands (seed-to-seed spread) overlap, and where not? `summary` above has the
# numbers behind every point.

# %%
widgets.interactive_figure(lambda method: figures.sparsity_figure(df, method=method, mark=0.5),
                           method=["wanda", "magnitude"])

# %%
figures.bits_figure(df)

# %% [markdown]
# ### 1-D loss landscapes of both arms
#
# A random direction $d$, **filter-normalized** (each output row of $d$ rescaled to the norm of the same
# row of $w$; Li et al., NeurIPS 2018), and the loss along $w + \alpha d$. The same random draw is used for
# both models. A flatter minimum shows a **wider** bowl: the loss rises more slowly as the weights move.
# It need not be a *lower* one: SAM minimizes the worst loss in a ρ-ball around the weights, not the loss
# at the weights, so it settles at a different point whose own training loss can be higher (compare the
# `loss` printed below) while its surroundings are flatter. A higher bottom is a different point, not a
# worse one: what compression cares about is how much the loss rises when the weights move. We also print
# the sharpness numbers of both models (notebook 02 explains them).

# %%
models = {arm: ex.load_run(runs[(runs["arm"] == arm) & (runs["seed"] == SEEDS[0])].iloc[0]) for arm in ARMS}
batches = ex.probe_batches(data, 128)          # the same 128 training images for every probe
summaries = {arm: sharpness.sharpness_summary(m, batches) for arm, m in models.items()}
for arm, s in summaries.items():
    print(f"{arm:>12}: loss {s['loss']:.3f}  λmax {s['lambda_max']:.1f}  Tr(H) {s['trace']:.0f} ± "
          f"{s['trace_stderr']:.0f}\n{'':>14}ε-sharpness(ρ=0.05) {s['eps_sharpness']:.4f}")
lowest = min(summaries, key=lambda a: summaries[a]["loss"])
flattest = min(summaries, key=lambda a: summaries[a]["lambda_max"])
print(f"lowest loss at its minimum: {lowest}; flattest (smallest λmax): {flattest}"
      + ("" if lowest == flattest else "\n  -> not the same arm: the flatter bowl sits higher, as explained above"))


def slices(direction_seed):
    lines = {arm: landscape.line(m, batches, distance=1.0, steps=25, seed=direction_seed)
             for arm, m in models.items()}
    return plots.line_figure(lines, title=f"filter-normalized 1-D slice (direction seed {direction_seed})")


widgets.interactive_figure(slices, direction_seed=[0, 1, 2])


# %% [markdown]
# ### The compression-direction slice
#
# Random directions say little about compression. The direction that matters is $\delta = C(w) - w$:
# below, the loss along $w + t\,\delta$, where $t = 1$ is the compressed model (star) and the dashed line
# is the second-order prediction $L(w) + t\, g^\top\delta + \tfrac{t^2}{2}\,\delta^\top H \delta$ (one
# Hessian-vector product). For W4A4 the compressed model also quantizes activations: that part of the
# damage is not a weight move and shows up as a jump between $t = 0$ on the compressed architecture and
# the original loss (`architecture_gap`).
#
# *Try this:* for which setting does the second-order prediction fail most, and is $\|\delta\|$ larger there?

# %%
def compression_slices(setting):
    paths = {arm: landscape.compression_path(m, ex.compress_setting(m, data, setting), batches,
                                             t_range=(-0.25, 1.25), steps=13)
             for arm, m in models.items()}
    for arm, p in paths.items():  # printed into the widget's own output area, above the figure
        print(f"{arm:>12} {setting}: loss jump {p.meta['measured_jump']:+.4f} "
              f"(2nd-order {p.meta['predicted_jump']:+.4f}), ‖δ‖ {p.meta['delta_norm']:.2f}\n"
              f"{'':>14}activation-quantization gap {p.meta['architecture_gap']:+.4f}")
    return plots.compression_path_figure(paths, title=f"loss along w + t·(C(w) − w), C = {setting}")


widgets.interactive_figure(compression_slices, setting=["wanda 70%", "magnitude 2:4", "W4A4", "W3A8"])

# %% [markdown]
# ## 4. The cost
#
# SAM doubles the forward/backward passes per step, so fine-tuning should take about twice as long.
# Times are those measured when each run was trained (a run loaded from the cache keeps its original
# time; on a shared machine they are noisy).
#
# *Try this:* `runs.groupby("arm")["train_time_s"].describe()`; in CrAFT the fine-tuning is minutes to hours
# on a GPU, so a 2× factor on it is small next to pretraining.

# %%
times = runs.groupby("arm", sort=False)["train_time_s"].median()
cost_ratio = times[CRAFT] / times[BASE]
print(f"median fine-tuning time: {BASE} {times[BASE]:.1f} s, {CRAFT} {times[CRAFT]:.1f} s "
      f"-> SAM costs {cost_ratio:.2f}x (two gradient evaluations per step: 2x expected)")

# %% [markdown]
# ## 5. Claim check
#
# For each compression setting fixed in `CLAIM_SETTINGS` (before looking at results), we pair the two
# arms seed by seed and compute the **drop reduction** = (AdamW's accuracy drop) − (SAM's accuracy drop),
# in percentage points. `ex.paired_gains` tests it setting by setting with a paired t test over the seeds,
# corrects the p-values across the settings of the claim (Holm), and reports a 95 % confidence interval
# and the effect size $d_z$. A setting *supports* the claim when the reduction is positive and significant
# after correction, *contradicts* it when negative and significant, and is *inconclusive* otherwise;
# settings where neither model loses more than one test image (0.28 pp) on average are *no damage*.
# With 5 seeds only fairly large effects can be significant: the report's power line says how large, and the
# per-seed wins are worth reading too.

# %% tags=["claim-check"]
gains = ex.paired_gains(df, BASE, CRAFT, settings=CLAIM_SETTINGS)
print("CLAIM CHECK: " + ex.claim_report(gains))
print(f"Cost: SAM fine-tuning took {cost_ratio:.2f}x AdamW's time "
      f"({times[CRAFT]:.1f} s vs {times[BASE]:.1f} s median per run).")

# %% [markdown]
# **Reading it.** The verdict above is generated from this run's numbers, so it can differ from the
# paper's setting: CrAFT fine-tunes ViT-B/16 (86 M parameters) on natural-image tasks, here a 139 k-parameter
# ViT adapts to 8×8 digits in 8 epochs. Things to look at: whether the gains grow with the compression
# strength (the curves above), whether pruning and quantization behave alike, and how the FP32
# accuracies of the two arms compare (a gain in compressed accuracy that is only a gain in FP32
# accuracy is not compression-friendliness).
#
# ## Try this
#
# 1. Set `RHO = 0.1` (or 0.2) and rerun: larger ρ means flatter but possibly less accurate models.
#    Where is the trade-off? (Notebook 02 sweeps ρ.)
# 2. ASAM: `ARMS = {"AdamW": {}, "ASAM ρ=0.5": {"sam_rho": 0.5, "adaptive": True}}`.
# 3. `MODEL = "resnet-tiny"`: does the claim hold for a CNN (CrAFT tested ResNets and ViTs)?
# 4. Add `"magnitude 80%"` or `"W3A3"` to `CLAIM_SETTINGS`: does the verdict depend on the settings picked?
# 5. Cheaper SAM: `ARMS = {"AdamW": {}, "LookSAM k=5": {"sam_rho": 0.05, "sam_mode": "looksam:5"}}` takes the
#    two-pass SAM step on every 5th step only (also `"random:0.25"`, `"msam"`, `"rwp"`; the README's *Cheaper SAM*
#    says what each kept of SAM's gain in `benchmarks/RESULTS.md`). How much of the claim survives?

# %%
print(f"notebook ran in {time.perf_counter() - T0:.0f} s wall, {time.process_time() - C0:.0f} s CPU in this kernel")


# %% [markdown]
# ## The claims ledger
#
# The pre-registered test of CrAFT's claim:
# one primary endpoint per claim (fixed before the run, where the method has something to fix), seeds
# chosen for 80 % power from a pilot, one verdict definition for every paper
# (`craftlab.analysis.ledger`, `craftlab.analysis.power.endpoint_verdict`). The lines below are read from
# `benchmarks/results/claims.csv` (`python -m benchmarks.run claims`); `ledger.live_line(claim_id, baseline,
# treatment)` computes the same verdict from your own paired values.

# %%
from craftlab.analysis import ledger  # noqa: E402

for paper in ('CrAFT',):
    for line in ledger.paper_lines(paper):
        print(line)
