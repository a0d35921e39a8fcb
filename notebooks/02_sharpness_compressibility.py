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
# # 02 · Sharpness and compressibility
#
# **The claim.** Flat minima compress well: models trained to flatter minima lose less accuracy when
# pruned or quantized. It is the assumption behind CrAFT (notebook 01), SNT and SAQ, and the finding of
# Na, Mehta & Strubell, *Train Flat, Then Compress* (Findings of EMNLP 2022) for BERT.
#
# **The argument.** Compression moves the weights by $\delta = C(w) - w$. A Taylor expansion at $w$:
#
# $$L(w + \delta) - L(w) \approx g^\top \delta + \tfrac12\, \delta^\top H \delta
# \;\le\; g^\top\delta + \tfrac12\, \lambda_{\max}(H)\, \|\delta\|^2 ,$$
#
# and at a minimum $g \approx 0$. Pruning ($\delta = -w \odot m$) gives the Optimal Brain Damage saliency
# $\tfrac12 \sum_i H_{ii} w_i^2$; quantization noise of step $\Delta$ gives $\mathbb E[\Delta L] \approx
# \tfrac{\Delta^2}{24} \operatorname{Tr}(H)$ (the HAWQ argument). So $\lambda_{\max}$ and $\operatorname{Tr}(H)$
# should predict the damage.
#
# **This notebook:** (1) how sharpness is measured; (2) why a measure must be scale-invariant, shown on a
# rescaling that does not change the function; (3) the centrepiece: models fine-tuned with SAM at
# $\rho \in \{0, 0.01, 0.05, 0.1, 0.2\}$ and with ASAM, their sharpness against their accuracy drop after
# pruning and W4A4, with Spearman correlations; (4) the second-order prediction against the measured loss
# jump along the compression direction.

# %%
import time

import numpy as np
import pandas as pd

from craftlab import experiments as ex
from craftlab import landscape, plots, sharpness, widgets
from craftlab.threads import configure_threads

configure_threads()  # THE thread policy: CRAFTLAB_THREADS, else 1 for the tiny zoo models
STATIC = widgets.static_figures()  # a PNG beside every plotly figure: the executed notebook shows them anywhere
T0, C0 = time.perf_counter(), time.process_time()
pd.set_option("display.precision", 4)

MODEL, EPOCHS = "vit-tiny", 8
SEEDS = (0, 1)
ARMS = {"AdamW": {}, "SAM ρ=0.01": {"sam_rho": 0.01}, "SAM ρ=0.05": {"sam_rho": 0.05},
        "SAM ρ=0.1": {"sam_rho": 0.1}, "SAM ρ=0.2": {"sam_rho": 0.2},
        "ASAM ρ=0.5": {"sam_rho": 0.5, "adaptive": True}}
N_PROBE = 128                                   # training images every probe uses (512 = tighter, 4x slower)
SETTINGS = ["magnitude 50%", "magnitude 70%", "wanda 70%", "W4A4"]

# %% [markdown]
# ## 1. Measuring sharpness
#
# Four common measures, all in `craftlab.sharpness` / `craftlab.landscape`, all computed on the same
# 128 training images with the model in eval mode (the model is never modified):
#
# | measure | definition | how |
# |---|---|---|
# | ε-sharpness (SAM) | $\max_{\|\epsilon\|_2\le\rho} L(w+\epsilon) - L(w)$ | SAM's step $\rho g/\|g\|$ (lower bound) |
# | adaptive ε-sharpness (ASAM) | same, over $\|\epsilon / \lvert w\rvert\|_2 \le \rho$ | Kwon et al., ICML 2021 |
# | $\lambda_{\max}$ | top Hessian eigenvalue | Lanczos on Hessian-vector products $Hv = \nabla(\nabla L\cdot v)$ |
# | $\operatorname{Tr}(H)$ | sum of all eigenvalues | Hutchinson: $\mathbb E_v[v^\top H v]$, $v$ random ±1 |
#
# and the picture: 1-D slices $L(w + \alpha d)$ along filter-normalized random directions.
# We start with the AdamW and SAM ρ = 0.05 models of notebook 01 (cached).

# %%
pair = ex.run_arms({k: ARMS[k] for k in ("AdamW", "SAM ρ=0.05")}, seeds=SEEDS[:1], model=MODEL, epochs=EPOCHS)
data = ex.load_data_for(pair)
batches = ex.probe_batches(data, N_PROBE)
plain, flat = (ex.load_run(r) for _, r in pair.iterrows())

eig = sharpness.top_hessian_eigenvalues(plain, batches, k=2, max_iter=40)
tr = sharpness.hessian_trace(plain, batches, n_samples=6)
eps = sharpness.eps_sharpness(plain, batches, rho=0.05)
aeps = sharpness.eps_sharpness(plain, batches, rho=0.5, adaptive=True)
print(f"AdamW model: top-2 eigenvalues {eig.eigenvalues[0]:.2f}, {eig.eigenvalues[1]:.2f} "
      f"({eig.n_hvp} Hessian-vector products, converged: {eig.converged})")
print(f"             Tr(H) ≈ {tr.trace:.0f} ± {tr.stderr:.0f} over {tr.n_hvp} probes")
print(f"             ε-sharpness {eps.sharpness:.4f} (ρ=0.05, ‖ε‖={eps.l2_norm:.3f}), "
      f"ASAM sharpness {aeps.sharpness:.4f} (ρ=0.5, ‖ε‖={aeps.l2_norm:.3f})")

# %%
lines = {arm: landscape.line(m, batches, distance=1.0, steps=25, seed=0)
         for arm, m in (("AdamW", plain), ("SAM ρ=0.05", flat))}
plots.line_figure(lines, title="filter-normalized slice, same direction seed for both models")

# %% [markdown]
# *Try this:* `landscape.plane(plain, batches, steps=15)` and `plots.plane_figure(..., kind="surface")`
# draw the 2-D version (≈ 225 forward passes).
#
# ## 2. Why scale invariance matters
#
# Dinh et al. (ICML 2017, *Sharp Minima Can Generalize for Deep Nets*) showed that a reparametrization
# that leaves the network's **function** unchanged can make a minimum arbitrarily sharp or flat. A ViT
# has one built in: attention only sees $q^\top k$, so multiplying every query by $\alpha$ and every key by
# $1/\alpha$ (the rows of `attn.qkv`, weight and bias) changes nothing the model computes. The Hessian
# with respect to the new parameters is $D^{-1} H D^{-1}$ with $D$ the diagonal rescaling, so
# $\lambda_{\max}$ and the plain ε-ball change. ASAM's ball $\|\epsilon/|w|\| \le \rho$ and per-row
# (filter) normalization rescale with the weights and do not; per-tensor ("layer") normalization does not
# help here, because queries and keys share one tensor.

# %%
ALPHAS = (1.0, 2.0, 4.0, 8.0)
scale = ex.scale_invariance_table(plain, data, alphas=ALPHAS, n_examples=N_PROBE, max_iter=10, tol=1e-2)
scale

# %%
rescaled = ex.rescale_attention(plain, ALPHAS[-1])
slices = {}
for norm in ("filter", "layer"):
    for name, m in ((f"α=1, {norm}", plain), (f"α={ALPHAS[-1]:g}, {norm}", rescaled)):
        slices[name] = landscape.line(m, batches, distance=0.5, steps=21, seed=0, normalization=norm)
plots.line_figure(slices, title="same function, same direction seed: filter- vs layer-normalized slices")

# %% tags=["claim-check"]
a1, aN = scale.iloc[0], scale.iloc[-1]
gap = {norm: float(np.max(np.abs(slices[f"α=1, {norm}"].loss - slices[f"α={ALPHAS[-1]:g}, {norm}"].loss)))
       for norm in ("filter", "layer")}
print("CLAIM CHECK (Dinh et al. 2017; ASAM; Li et al. 2018): a function-preserving rescaling "
      f"(queries ×{aN['alpha']:g}, keys ×1/{aN['alpha']:g})")
print(f"  function unchanged:        max |logit change| = {scale['max_logit_change'].max():.2e}")
print(f"  λmax                       {a1['lambda_max']:.2f} -> {aN['lambda_max']:.2f}  "
      f"(×{aN['lambda_max'] / a1['lambda_max']:.2f})")
print(f"  SAM ε-sharpness (ρ=0.05)   {a1['eps_sharpness']:.4f} -> {aN['eps_sharpness']:.4f}  "
      f"(×{aN['eps_sharpness'] / a1['eps_sharpness']:.2f})")
print(f"  ASAM sharpness (ρ=0.5)     {a1['asam_sharpness']:.4f} -> {aN['asam_sharpness']:.4f}  "
      f"(×{aN['asam_sharpness'] / a1['asam_sharpness']:.3f})")
print(f"  1-D slice, max |Δloss|:    filter-normalized {gap['filter']:.2e}, layer-normalized {gap['layer']:.2e}")
tol = 1e-3
invariant = {"λmax": abs(aN["lambda_max"] / a1["lambda_max"] - 1) < tol,
             "SAM ε-sharpness": abs(aN["eps_sharpness"] / a1["eps_sharpness"] - 1) < tol,
             "ASAM sharpness": abs(aN["asam_sharpness"] / a1["asam_sharpness"] - 1) < tol,
             "filter-normalized slice": gap["filter"] < tol, "layer-normalized slice": gap["layer"] < tol}
print("Verdict: invariant (relative change < 0.1%): " + ", ".join(k for k, v in invariant.items() if v)
      + "; NOT invariant: " + (", ".join(k for k, v in invariant.items() if not v) or "none") + ".")

# %% [markdown]
# So raw $\lambda_{\max}$ and plain ε-sharpness of *different* models are comparable only if nothing like
# this rescaling separates them. Models fine-tuned from the same initialization with the same schedule
# (our case below) are usually close enough, but keep the caveat in mind when reading the next section.
#
# *Try this:* the rescaling with α < 1; or look at `sharpness.layer_sharpness(rescaled, batches)` to see
# which blocks' curvature moved.
#
# ## 3. The centrepiece: sharpness vs accuracy drop
#
# Six fine-tuning arms × two seeds, same schedule and seeds: AdamW, SAM at four radii, ASAM. Runs shared
# with notebook 01 come from the cache. For each model we measure sharpness (on the same 128 training
# images) and the accuracy drop under one-shot pruning and W4A4 PTQ (on the test set).

# %%
# The training runs, half of the arms per cell (from an empty cache each cell stays under about a minute).
half = dict(list(ARMS.items())[: len(ARMS) // 2])
runs_first = ex.run_arms(half, seeds=SEEDS, model=MODEL, epochs=EPOCHS)

# %%
rest = {k: v for k, v in ARMS.items() if k not in half}
runs = pd.concat([runs_first, ex.run_arms(rest, seeds=SEEDS, model=MODEL, epochs=EPOCHS)], ignore_index=True)

# %%
t = time.perf_counter()
sharp = ex.sharpness_table(runs, data, n_examples=N_PROBE, max_iter=10, tol=1e-2, n_samples=4, verbose=False)
drops = ex.sweep_runs(runs, data, ["FP32", *SETTINGS])
print(f"probed and compressed {len(runs)} models in {time.perf_counter() - t:.0f} s")
MEASURES = ["lambda_max", "trace", "eps_sharpness", "asam_sharpness"]
table = drops.merge(sharp[["arm", "seed", "probe_loss", *MEASURES]], on=["arm", "seed"])
table[table["setting"] == "FP32"].pivot_table(index="arm", values=["fp_accuracy", "probe_loss", *MEASURES], sort=False)


# %%
def scatter(measure, setting):
    part = table[table["setting"] == setting]
    return plots.sharpness_scatter_figure(part, x=measure, y="accuracy_drop", color="arm", label="model",
                                          title=f"accuracy drop after {setting} vs {measure}")


widgets.interactive_figure(scatter, measure=MEASURES, setting=SETTINGS)

# %% [markdown]
# Spearman rank correlations (one point per model), with two-sided permutation p-values. A positive
# correlation means "sharper ⇒ loses more accuracy", as the claim predicts. Because larger ρ also lowers
# the FP32 accuracy here, we also show the correlation of sharpness with the FP32 accuracy itself and
# with the compressed accuracy: a flat model that starts lower has less to lose.
#
# *Try this:* in the scatter above, switch to `asam_sharpness`: why can a scale-invariant measure rank these
# models differently from λmax? (Hint: compare the `probe_loss` column of the table above.)

# %%
rows = []
for setting in SETTINGS:
    part = table[table["setting"] == setting]
    for measure in MEASURES:
        rho_drop, p_drop, n = ex.spearman_test(part[measure], part["accuracy_drop"])
        rho_acc, p_acc, _ = ex.spearman_test(part[measure], part["accuracy"])
        rows.append({"setting": setting, "measure": measure, "n": n, "spearman_drop": rho_drop, "p_drop": p_drop,
                     "spearman_compressed_acc": rho_acc, "p_compressed_acc": p_acc})
fp = table[table["setting"] == "FP32"]
corr = pd.DataFrame(rows)
for measure in MEASURES:
    r, p, _ = ex.spearman_test(fp[measure], fp["fp_accuracy"])
    print(f"Spearman({measure}, FP32 accuracy) = {r:+.2f} (p = {p:.3f})")
corr

# %% tags=["claim-check"]
PRIMARY = "lambda_max"   # fixed before looking: the measure of the flat => compressible argument above
print(f"CLAIM CHECK: sharper models lose more accuracy under compression\n  (x = {PRIMARY} on {N_PROBE} "
      f"training images, y = test accuracy drop, n = {len(runs)} models)")
for setting in ["magnitude 50%", "W4A4"]:
    c = corr[(corr["setting"] == setting) & (corr["measure"] == PRIMARY)].iloc[0]
    if c["spearman_drop"] > 0 and c["p_drop"] < 0.05:
        words = "SUPPORTS the claim (positive, p < 0.05)"
    elif c["spearman_drop"] > 0:
        words = "points the claim's way but is NOT significant (p >= 0.05)"
    elif c["p_drop"] < 0.05:
        words = "CONTRADICTS the claim (negative, p < 0.05)"
    else:
        words = "is INCONCLUSIVE (negative, not significant)"
    print(f"  {setting:>13}: Spearman ρ = {c['spearman_drop']:+.2f}, p = {c['p_drop']:.3f} -> {words}")
best = corr.loc[corr["spearman_drop"].idxmax()]
print(f"  strongest positive correlation overall: {best['measure']} vs {best['setting']} drop, "
      f"ρ = {best['spearman_drop']:+.2f} (p = {best['p_drop']:.3f});\n"
      f"  {int((corr['spearman_drop'] > 0).sum())} of {len(corr)} measure × setting pairs are positive")
fp_by_arm = fp.groupby("arm", sort=False)["fp_accuracy"].mean()
r_fp, p_fp, _ = ex.spearman_test(fp[PRIMARY], fp["fp_accuracy"])
print(f"  confound: Spearman({PRIMARY}, FP32 accuracy) = {r_fp:+.2f} (p = {p_fp:.3f});\n  FP32 accuracy ranges from "
      f"{100 * fp_by_arm.min():.1f}% ({fp_by_arm.idxmin()}) to {100 * fp_by_arm.max():.1f}% ({fp_by_arm.idxmax()})")
for setting in ["magnitude 50%", "W4A4"]:
    c = corr[(corr["setting"] == setting) & (corr["measure"] == PRIMARY)].iloc[0]
    trend = ("flatter models also end MORE accurate after compression" if c["spearman_compressed_acc"] < 0 else
             "flatter models do NOT end more accurate after compression (they started lower)")
    sig = "significant" if c["p_compressed_acc"] < 0.05 else "not significant"
    print(f"  {setting:>13}: Spearman({PRIMARY}, compressed accuracy) = {c['spearman_compressed_acc']:+.2f} "
          f"(p = {c['p_compressed_acc']:.3f}, {sig})\n{'':>17}-> {trend}")

# %% [markdown]
# ## 4. Predicted vs measured damage along the compression direction
#
# Back to the Taylor expansion: for each model and compression $C$, `compression_path` measures the loss
# jump $L(w+\delta) - L(w)$ (weights only: activations stay in float, so for W4A4 this is the weight part)
# and predicts it from one gradient and one Hessian-vector product: $g^\top\delta + \tfrac12\delta^\top H\delta$.

# %%
t = time.perf_counter()
second = ex.second_order_table(runs, data, ["magnitude 50%", "W4A4"], n_examples=N_PROBE)
print(f"{len(second)} compression directions in {time.perf_counter() - t:.0f} s")
second.groupby(["setting", "arm"], sort=False)[["measured", "predicted", "first_order", "curvature",
                                               "full_jump"]].mean()


# %%
def prediction_plot(setting):
    part = second[second["setting"] == setting]
    fig = plots.sharpness_scatter_figure(part, x="predicted", y="measured", color="arm", label="seed",
                                         title=f"{setting}: measured vs second-order loss jump")
    lo, hi = part[["predicted", "measured"]].min().min(), part[["predicted", "measured"]].max().max()
    return fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="measured = predicted",
                           line=dict(color="black", dash="dot", width=1))


widgets.interactive_figure(prediction_plot, setting=["magnitude 50%", "W4A4"])

# %%
path = landscape.compression_path(plain, ex.compress_setting(plain, data, "magnitude 50%"), batches,
                                  t_range=(-0.5, 1.5), steps=21)
plots.compression_path_figure(path, title="AdamW model, magnitude 50%: the loss along w + t·δ")

# %% tags=["claim-check"]
print("CLAIM CHECK: the second-order model g·δ + ½ δᵀHδ predicts the loss jump of compression")
for setting, part in second.groupby("setting", sort=False):
    ratio = (part["predicted"] / part["measured"]).median()
    r, p, n = ex.spearman_test(part["predicted"], part["measured"])
    curv_share = (part["curvature"].abs() / (part["curvature"].abs() + part["first_order"].abs())).median()
    within = ((part["predicted"] / part["measured"] - 1).abs() <= 0.25).mean()
    words = ("predicts it well" if within >= 0.75 and r > 0.5 else
             "ranks the models but misses the size" if r > 0.5 else "does NOT predict it here")
    weight_share = (part["measured"] / part["full_jump"]).median()
    print(f"  {setting:>13}: median predicted/measured = {ratio:.2f}, {100 * within:.0f}% of {n} models within ±25%,\n"
          f"{'':>17}Spearman(predicted, measured) = {r:+.2f} (p = {p:.3f});\n"
          f"{'':>17}curvature term = {100 * curv_share:.0f}% of |g·δ| + |½δᵀHδ| (median)\n"
          f"{'':>17}-> the quadratic model {words}")
    print(f"{'':>17}the weight move is {100 * weight_share:.0f}% of the compressed model's whole loss jump (median)"
          + (f"\n{'':>17}(the rest is activation quantization, which no weight-space model sees)"
             if weight_share < 0.9 else ""))

# %% [markdown]
# **Reading it.** When the quadratic term dominates and the prediction matches, the damage of a
# compression is $\tfrac12\delta^\top H\delta$: curvature *in the compression direction*, not $\lambda_{\max}$
# or $\operatorname{Tr}(H)$ in general. Whether global sharpness predicts compressibility then depends on how
# well it stands in for that directional curvature, and on whether flat models also move less
# ($\|\delta\|$ differs between models too). That is why section 3's correlations can be weaker than
# section 4's agreement.
#
# ## Try this
#
# 1. Replace `PRIMARY` by `"trace"` and the settings by `"wanda 70%"`: is the picture the same? (Decide
#    *before* running; looking at all of them and picking the best is how false findings are made.)
# 2. Add seeds (`SEEDS = (0, 1, 2)`): do the p-values shrink? And raise `N_PROBE` to 512: λmax is an
#    estimate from a sample of training images, and a correlation near the significance threshold can
#    cross it either way when the measurement gets less noisy. Which verdicts are robust?
# 3. In section 4, use `"W3A8"` or `"magnitude 70%"`: where does the quadratic model break down, and why
#    (hint: how large is $\|\delta\|$ compared with the scale of the slices in section 1)?

# %%
print(f"notebook ran in {time.perf_counter() - T0:.0f} s wall, {time.process_time() - C0:.0f} s CPU in this kernel")
