"""The Learn tab's words: what the page shows and what the claims ledger found for each paper."""

from __future__ import annotations

__all__ = ["LEARN", "learn_text"]

LEARN = """
## What you are looking at

**The two arms.** Each model is fine-tuned twice from the same pretrained weights, with the same
schedule and seed: once with **AdamW** alone (blue) and once with AdamW + **SAM** (red) — the CrAFT
recipe. SAM minimizes the worst loss in a ρ-ball around the weights, which steers training towards
*flat* minima. The zoo models' arms exist for three seeds (seed 0 answers at once; seeds 1 and 2 are
fine-tuned in the background), so every number comes with its noise.

**Every panel shows one setting.** Each panel is titled with the model and setting it shows, e.g.
`[vit-tiny · wanda 70% + W4A8]`; when you change a control, answers still computing for the old setting
are dropped, so the page never mixes two settings. The link under the controls restores the view.

**Compression as a weight perturbation.** Pruning sets weights to zero and quantization rounds them to
a grid: both move the weights from `w` to `C(w)`. If the minimum is flat, the loss barely changes along
that move, so the compressed model keeps its accuracy. That is the whole CrAFT argument, and every plot
here looks at it from one side.

* **Accuracy cards** — test accuracy of each arm in full precision (FP) and after the chosen compression,
  as mean ± sd over the seeds (seed 0's own numbers below); the drop is what compression cost. One test
  image is 1/359 = 0.28 pts of accuracy on digits. The sentence under the cards is the paired comparison
  over the seeds (CrAFT − AdamW, paired by seed, t test, from `craftlab.analysis.stats`): a gap inside its
  confidence interval's noise is not a finding. Magnitude pruning removes the smallest weights globally; Wanda
  scores weights by |w|·‖x‖ from 128 calibration images, per output row; N:M keeps N of every M
  consecutive weights (2:4 keeps 2 of 4, 50 % sparse: what sparse tensor cores run; 1:4 is 75 % sparse).
  Quantization is post-training, uniform, symmetric for weights (per output channel or per tensor) and
  asymmetric per tensor for activations calibrated on the same 128 images; "float" leaves that side in
  full precision. BatchNorm statistics are *not* re-estimated by default, which is why resnet-tiny collapses
  under layer-uniform sparsity and loses most of its accuracy at 4-bit weights; tick *re-estimate BatchNorm
  statistics* (CNNs) to re-estimate them on the calibration images after pruning *and* after quantization,
  as `craftlab compress --recalibrate-bn` (or `craftlab.compress(..., recalibrate_bn=True)`) does: one
  protocol for every row (see notebook 03); the cards say which was used. With a compensation on a CNN the
  cards also show this cheap fix alone, since it corrects the same per-channel error.
* **Accuracy vs sparsity / bits** — the same two arms over the whole range of the pruning method (at your
  chosen bits) or of the weight bits (at your chosen pruning and activation bits), mean ± 1 sd over the
  seeds, computed in the background and cached; so the star, your current setting, sits on its curve.
  "FP" on the bits axis is float weights. The gap between the curves is the benefit of flatness.
* **Sharpness** — measured at the fine-tuned weights on 128 training images. **λmax** is the largest
  Hessian eigenvalue (the curvature of the steepest direction; Lanczos). **trace** is the sum of all
  eigenvalues (total curvature; Hutchinson estimate ± its standard error). **ε-sharpness** is how much
  the loss rises after SAM's own worst-case step of radius ρ. Smaller = flatter. Compare the two arms of
  one model: the numbers depend on the architecture's parameterization and do not compare across models.
  The **gap plot** shows CrAFT − AdamW for each measure, relative to AdamW (below 0: CrAFT is flatter by
  that measure); the **scatter** puts the accuracy drop at the current setting against one measure, one
  point per arm and seed (the extra seeds' sharpness is measured in the background and joins on the next
  redraw), with Spearman ρ: does the flatter model lose less here? (notebook 02 does it over 12 models).
* **Curves with a compensation** — every compressed point of both curves is compensated too (a QwT or
  QwT-v2 fit per point, about 1.5 s per pair of arms on 2 cores), so they fill in more slowly.
* **Train: your own foundation** — pretrain a zoo architecture on mnist5k with Adam / AdamW / SGD, SAM and
  a train-time transformation that folds away (expand, repvgg, weight-noise: SNT's idea, with stand-ins), then
  fine-tune an AdamW / CrAFT pair from it: the pair appears in the model list (`pretrained:...`).
* **Loss along the compression direction** — the loss on the segment `w + t·(C(w) − w)`: t = 0 is the
  fine-tuned model, t = 1 (★) the compressed one. The dashed curve is the 2nd-order Taylor prediction
  `t·g·δ + t²/2·δᵀHδ`: where it bends up early, curvature along the compression direction is what hurts.
  BatchNorm statistics move along with the weights (from the fine-tuned model's at t = 0 to the compressed
  model's at t = 1), so with BN re-estimation or QwT-v2 t = 0 is exactly the fine-tuned model. With activation
  quantization the whole curve is computed with quantized activations (they are not weights), so t = 0 sits
  off the float loss: the slice says so and marks the float model's own loss (○).
* **2-D landscape** — the loss on the plane spanned by the compression direction (α; ★ at α = 1) and a
  random filter-normalized direction scaled to the same length (β), in log10 or linear loss and on one colour
  scale for both arms, so wider basins are directly comparable; the loss at the fine-tuned (✕) and compressed
  (★) points is printed. A coarse grid shows first, a finer one replaces it a few seconds later. The SAM
  arm's minimum often sits *higher*: it is a different point (SAM minimizes the worst loss around the
  weights, not the loss at them), not a worse one — what matters is how fast the loss rises from it. With
  no compression selected, both axes are random (the classic Li et al. plot).
* **Quantization recipe and compensation** — *RepQ-ViT* (ViTs only) quantizes the attention matmuls too, with
  a log√2 softmax quantizer and LayerNorm re-parameterization. *QwT* fits, per block, a linear map from the
  quantized block's input to the error of its output on the calibration images (closed form, ridge) and adds
  it as a side path (extra parameters); *QwT-v2* fits one gain and offset per output channel of each
  compressed layer and folds them into its weight scale and bias (no extra parameters, the same integer
  grid); on a pruned model it compensates the pruning error. Both are fitted against the uncompressed arm,
  so the gap between the arms may shrink: does compensation add to flatness, or fix what flatness fixes? With
  RepQ-ViT or QwT the compressed model is not a point in the original weight space, so the landscapes say so
  instead of drawing a line that does not exist (notebook 03).
* **Guided tour** — three presets: where flatness pays (resnet-tiny, 4-bit weights), where it does not
  (vit-tiny, magnitude 50%) and the cliff (Wanda 85%). BatchNorm re-estimation after pruning is a checkbox
  for CNNs; the cards say which was used.

## Going further: the notebooks

* `notebooks/00_quickstart.ipynb` — fine-tune a small pretrained vision transformer on a new task,
  prune and quantize it, and measure what each costs in accuracy, in a few minutes on a laptop CPU.
* `notebooks/01_craft.ipynb` — CrAFT tested: fine-tune with and without SAM (same schedule), then
  compress both and compare, over several seeds.
* `notebooks/02_sharpness_compressibility.ipynb` — do flat minima compress well? The second-order
  argument (ΔL ≈ g·δ + ½δᵀHδ), and sharpness measures against the accuracy lost to compression.
* `03_qwt` (quantization compensation), `04_snt` (compression-friendly pretraining), `05_supernet`
  (mixed-precision supernet with LoRA), `06_last` and `07_miet` (frozen-backbone adaptation): one per paper,
  each ending in a claim check.

Open them with `jupyter lab notebooks/` (install the `notebooks` extra: `pip install -e ".[notebooks]"`).
Everything the app shows is one call away in Python: `craftlab_app.explore.service.Explorer().compress("vit-tiny",
method="wanda", sparsity=0.6)`.
"""


def learn_text() -> str:
    """The Learn tab: :data:`LEARN` and what the claims ledger found for each paper (its verdict lines when the
    checkout has ``benchmarks/results/claims.csv``, else how to compute them)."""
    from craftlab.analysis import ledger

    df = ledger.read_ledger()
    if df is None:
        return LEARN + ("\n## What the papers' claims look like here\n\nNo claims ledger in this checkout: "
                        "`python -m benchmarks.run claims` computes it.\n")
    papers = list(dict.fromkeys(c.paper for c in ledger.CLAIMS))
    lines = [f"* {line}" for p in papers for line in ledger.paper_lines(p, df)]
    return (LEARN + "\n## What the papers' claims look like here\n\nThe claims ledger "
            "(`benchmarks/results/claims.csv`): one pre-registered primary endpoint per claim, paired seeds, one "
            "verdict definition (supports / contradicts / equivalent / inconclusive with the effect the design could "
            "detect). Harms are reported as plainly as gains.\n\n" + "\n".join(lines) + "\n")
