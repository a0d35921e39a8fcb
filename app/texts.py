"""Static texts of the CraftLab app: the page style and the Learn tab."""

CSS = """
.arm-card {border-radius: 10px; padding: 10px 14px !important;}
#card-plain {border-left: 6px solid #636EFA;}
#card-craft {border-left: 6px solid #EF553B;}
.big {font-size: 1.5em; font-weight: 700;}
"""

LEARN = """
## What you are looking at

**The two arms.** Each model is fine-tuned twice from the same pretrained weights, with the same
schedule and seed: once with **AdamW** alone (blue) and once with AdamW + **SAM** (red) — the CrAFT
recipe. SAM minimizes the worst loss in a ρ-ball around the weights, which steers training towards
*flat* minima.

**Compression as a weight perturbation.** Pruning sets weights to zero and quantization rounds them to
a grid: both move the weights from `w` to `C(w)`. If the minimum is flat, the loss barely changes along
that move, so the compressed model keeps its accuracy. That is the whole CrAFT argument, and every plot
here looks at it from one side.

* **Accuracy cards** — test accuracy of each arm in full precision (FP) and after the chosen compression;
  the drop is what compression cost. Magnitude pruning removes the smallest weights globally; Wanda
  scores weights by |w|·‖x‖ from 128 calibration images, per output row; N:M keeps N of every M
  consecutive weights (2:4 keeps 2 of 4, 50 % sparse: what sparse tensor cores run; 1:4 is 75 % sparse).
  Quantization is post-training, uniform, symmetric for weights (per output channel or per tensor) and
  asymmetric per tensor for activations calibrated on the same 128 images; "float" leaves that side in
  full precision. BatchNorm statistics are *not* re-estimated after pruning here, which is why resnet-tiny
  collapses under layer-uniform sparsity; `craftlab compress --recalibrate-bn` (or `craftlab.compress(...,
  recalibrate_bn=True)`) re-estimates them on the calibration images (see notebook 03).
* **Accuracy vs sparsity / bits** — the same two arms over the whole range of the pruning method or
  bit-width (no other compression applied), computed once per model in the background and cached. The
  dashed line and the stars mark your current setting. The gap between the curves is the benefit of
  flatness.
* **Sharpness** — measured at the fine-tuned weights on 128 training images. **λmax** is the largest
  Hessian eigenvalue (the curvature of the steepest direction; Lanczos). **trace** is the sum of all
  eigenvalues (total curvature; Hutchinson estimate ± its standard error). **ε-sharpness** is how much
  the loss rises after SAM's own worst-case step of radius ρ. Smaller = flatter.
* **Loss along the compression direction** — the loss on the segment `w + t·(C(w) − w)`: t = 0 is the
  fine-tuned model, t = 1 (★) the compressed one. The dashed curve is the 2nd-order Taylor prediction
  `t·g·δ + t²/2·δᵀHδ`: where it bends up early, curvature along the compression direction is what hurts.
  With activation quantization the whole curve is computed with quantized activations, so t = 0 already
  sits above the float loss.
* **2-D landscape** — the loss on the plane spanned by the compression direction (α; ★ at α = 1) and a
  random filter-normalized direction scaled to the same length (β), in log10 and on one colour scale for
  both arms, so wider basins are directly comparable. With no compression selected, both axes are random
  (the classic Li et al. plot).

## Going further: the notebooks

* `notebooks/00_quickstart.ipynb` — fine-tune a small pretrained vision transformer on a new task,
  prune and quantize it, and measure what each costs in accuracy, in a few minutes on a laptop CPU.
* `notebooks/01_craft.ipynb` — CrAFT tested: fine-tune with and without SAM (same schedule), then
  compress both and compare, over several seeds.
* `notebooks/02_sharpness_compressibility.ipynb` — do flat minima compress well? The second-order
  argument (ΔL ≈ g·δ + ½δᵀHδ), and sharpness measures against the accuracy lost to compression.

Open them with `jupyter lab notebooks/` (install the `notebooks` extra: `pip install -e ".[notebooks]"`).
Everything the app shows is one call away in Python: `craftlab_app.service.Explorer().compress("vit-tiny",
method="wanda", sparsity=0.6)`.
"""
