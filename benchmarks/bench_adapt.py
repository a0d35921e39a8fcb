"""Benchmark: frozen-backbone adaptation (LAST side-tuning, MIET edge tuning) vs linear probe, LoRA, full fine-tuning.

Run: ``python -m benchmarks.bench_adapt`` (prints markdown; writes benchmarks/results/adapt.md and adapt.csv).

1. The embedded default (vit-tiny pretrained on mnist5k → digits), every method at 3 seeds, same epochs / data order
   / AdamW + cosine: test accuracy, trainable parameters, training memory (tensors saved for backward + gradients +
   optimizer state, one step at batch 64), time per epoch, bytes per image sent.
2. A ViT-B-sized stand-in (timm ``vit_base_patch16_224``, random init, 224 px, batch 4): memory and step time of
   one step per method, where activations dominate as in the papers.
3. K-way parallel speed-up (K = 1, 4, 8, 16) against K sequential runs, on both.
4. The papers' claims (LAST ≈ 30 % of the memory and ≈ 60 % of the training time of PEFT, at higher accuracy) next to
   what was measured, with paired tests by seed (Holm across the comparisons).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import craftlab
from craftlab.adapt import methods, miet, parallel, recipes, steps
from craftlab.studies import adapt as study

RESULTS = Path(__file__).parent / "results"
ARMS, LORA, LAST = methods.ARMS, methods.LORA, methods.LAST  # the one table of arms
VITB_DEPTH = 12
VITB_ARMS = {methods.method(m).configure(kw).label(VITB_DEPTH): (m, kw) for m, kw in (
    ("linear", {}), ("lora", {}), ("full", {}), ("full", {"sam_rho": 0.05}), ("last", {"gap": 3}),
    ("last", {"gap": 1}), ("miet", {}))}
"""The ViT-B stand-in's memory arms, labelled by the method registry for its 12 blocks."""


def _mb(b: float) -> str:
    return f"{b / 1e6:.2f}" if b < 1e8 else f"{b / 1e6:.0f}"


def tiny_table(seeds, epochs):
    model = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    data = craftlab.load_data("digits")
    df = study.compare_methods(model, data, arms=ARMS, seeds=seeds, epochs=epochs, progress=True)
    g = df.groupby("arm", sort=False)
    summ = g.agg(acc=("test_accuracy", "mean"), sd=("test_accuracy", "std"), params=("trainable_params", "first"),
                 saved=("saved_bytes", "first"), grads=("grad_bytes", "first"), opt=("optimizer_bytes", "first"),
                 inp=("input_bytes", "first"),
                 mem=("memory_bytes", "first"), epoch_s=("time_per_epoch_s", "mean"), sent=("bytes_per_image", "first"),
                 lr=("lr", "first"))
    ref = summ.loc[LORA]
    print(f"### vit-tiny → digits ({len(seeds)} seeds, {epochs} epochs, batch 64; memory: one step at batch 64)\n")
    print("| method | lr | test accuracy (mean ± sd) | trainable params | saved / grads / optimizer / input (MB) | "
          "memory (MB) | vs LoRA | time / epoch (s) | vs LoRA | bytes / image sent |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm, r in summ.iterrows():
        print(f"| {arm} | {r.lr:g} | {100 * r.acc:.1f} ± {100 * r.sd:.1f} | {int(r.params):,} | "
              f"{_mb(r.saved)} / {_mb(r.grads)} / {_mb(r.opt)} / {_mb(r.inp)} | {_mb(r.mem)} | {r.mem / ref.mem:.0%} | "
              f"{r.epoch_s:.3f} | {r.epoch_s / ref.epoch_s:.0%} | {int(r.sent):,} |")
    print("\nMemory: one training step's saved tensors, gradients, optimizer state and input (the image batch; for "
          "the side methods the tapped features they train on). "
          "LAST trains with the frozen backbone run on every batch (no cache); the linear probe and MIET's device "
          "train on features tapped / received once. Full fine-tuning and LoRA (on the device) receive the image "
          "itself; full fine-tuning on a device also receives the whole model once "
          f"({miet.model_bytes(model):,} bytes).\n")
    return df, summ


def _paired(df):
    tests = study.paired_tests(df)  # the study's pairs, t test by seed, Holm across the rows
    print("Paired by seed (test accuracy, treatment − baseline, t test, Holm across the rows):\n")
    print("| comparison | mean difference (pp) | 95 % CI | d_z | p (Holm) |")
    print("|---|---|---|---|---|")
    for c, p in tests.values():
        print(f"| {c.setting} | {100 * c.mean_diff:+.1f} | [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}] | "
              f"{c.effect_size:+.1f} | {p:.2g} |")
    print()
    return tests


def vitb(batch=4):
    model = craftlab.build_model("vit_base_patch16_224", num_classes=10)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 224, 224, generator=g), torch.arange(batch) % 10
    rows = {}
    for arm, (method, kw) in VITB_ARMS.items():
        step = steps.training_step(model, x, y, method, num_classes=10, **kw)
        mem = step.memory()
        t0 = time.perf_counter()
        if step.frozen:  # a side method: its step starts with the frozen backbone's forward (the taps)
            step = steps.training_step(model, x, y, method, num_classes=10, **kw)
        step.run()
        rows[arm] = (mem, time.perf_counter() - t0)
        print(f"  {arm}: {mem.total_bytes / 1e6:.0f} MB, {rows[arm][1]:.1f} s/step", file=sys.stderr)
        del step
    ref_mem, ref_t = rows[LORA][0].total_bytes, rows[LORA][1]
    cuda = torch.cuda.is_available()
    print(f"### ViT-B-sized stand-in (vit_base_patch16_224, random init, 224 px, batch {batch}, one step each, "
          f"{'CUDA' if cuda else 'CPU: saved tensors + grads + optimizer state + input'})\n")
    print("| method | trainable params | saved / grads / optimizer / input (MB) | memory (MB) | vs LoRA | step (s) | "
          "vs LoRA |")
    print("|---|---|---|---|---|---|---|")
    for arm, (m, t) in rows.items():
        print(f"| {arm} | {m.trainable_params:,} | {_mb(m.saved_bytes)} / {_mb(m.grad_bytes)} / "
              f"{_mb(m.optimizer_bytes)} / {_mb(m.input_bytes)} | {_mb(m.total_bytes)} | "
              f"{m.total_bytes / ref_mem:.0%} | {t:.2f} | {t / ref_t:.0%} |")
    print(f"\nWeights held in every case: {rows[LORA][0].weights_bytes / 1e6:.0f} MB (not counted above). "
          "Step time: one step after the measured one (one thread, a shared machine: indicative); the side methods' "
          "steps include the frozen backbone's forward pass that taps their input (for MIET, the server's part), "
          "timed with building the small side network.\n")
    return model, x, y, rows


def kway_tiny():
    model = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    data = craftlab.load_data("digits")
    df = study.kway_speedup(model, data, ks=(1, 4, 8, 16), epochs=1)
    print("### K-way parallel LAST (vit-tiny, g=1, r=16, one epoch, the backbone run per batch)\n")
    print("| K | K-way (s) | K sequential (s) | speed-up | backbone passes K-way / sequential |")
    print("|---|---|---|---|---|")
    for r in df.itertuples():
        print(f"| {r.K} | {r.parallel_s:.2f} | {r.sequential_s:.2f} | {r.speedup:.2f}× | "
              f"{r.backbone_passes_parallel} / {r.backbone_passes_sequential} |")
    print()
    return df


def kway_vitb(model, batch=4, steps=2):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch * steps, 3, 224, 224, generator=g), torch.arange(batch * steps) % 10
    data = craftlab.from_tensors(x, y, val=(x[:1], y[:1]), test=(x[:1], y[:1]), batch_size=batch)
    taps, view = recipes.side_spec(model, "last", gap=3)
    src = recipes.sources(model, data, taps, view, None, torch.device("cpu"), splits=("train",))["train"]
    t0 = time.perf_counter()
    parallel.fit_one(recipes.build_side(model, "last", taps, 10), src, epochs=1, batch_size=batch)
    one = time.perf_counter() - t0
    print(f"### K-way parallel LAST on the ViT-B stand-in (g=3, r=16, {steps} steps of batch {batch})\n")
    print("| K | K-way (s) | K sequential (s) = K × one run | speed-up |")
    print("|---|---|---|---|")
    rows = []
    for K in (1, 4, 8, 16):
        nets = [recipes.build_side(model, "last", taps, 10, seed=i) for i in range(K)]
        t0 = time.perf_counter()
        parallel.fit_parallel(nets, src, epochs=1, lrs=[1e-3] * K, batch_size=batch)
        par = time.perf_counter() - t0
        rows.append((K, par, K * one))
        print(f"| {K} | {par:.1f} | {K * one:.1f} | {K * one / par:.1f}× |")
    print(f"\nOne sequential run ({steps} steps) took {one:.1f} s, nearly all of it the frozen backbone's forward "
          "pass; the sequential column multiplies it by K (K identical runs).\n")
    return rows


def bytes_table(model_tiny, model_b):
    print("### Bytes per image sent to the device (one safetensors message per image, header included)\n")
    print("| model | method | what | shape | bytes / image | raw tensor bytes |")
    print("|---|---|---|---|---|---|")
    data = craftlab.load_data("digits")
    for name, model, image, k, gap in (("vit-tiny", model_tiny, data.test_set[0][0], 4, 2),
                                       ("ViT-B stand-in", model_b, torch.zeros(3, 224, 224), 12, 3)):
        for t in miet.transfers(model, image, k, gap):
            print(f"| {name} | {t.method} | {t.what} | {tuple(t.shape)} | {t.per_image_bytes:,} | "
                  f"{t.payload_bytes:,} |")
    print()


def claims(summ, tests, vitb_rows):
    lm, ll = vitb_rows[LORA][0].total_bytes, vitb_rows["LAST (g=3, m=4)"][0].total_bytes
    tm, tl = vitb_rows[LORA][1], vitb_rows["LAST (g=3, m=4)"][1]
    r = summ.loc[LAST]
    c, p = tests[f"{LAST} vs {LORA}"]
    print("### The papers' claims next to these measurements\n")
    print("| claim (LAST paper, abstract) | measured here | points |")
    print("|---|---|---|")
    tiny_m = r.mem / summ.loc[LORA].mem
    print(f"| ≈ 30 % of PEFT's training memory | vit-tiny: {tiny_m:.0%} of LoRA; "
          f"ViT-B stand-in: {ll / lm:.0%} (g=3) | {'same way' if max(tiny_m, ll / lm) < 1 else 'mixed'} |")
    tiny_t = r.epoch_s / summ.loc[LORA].epoch_s
    print(f"| ≈ 60 % of PEFT's training time | vit-tiny: {tiny_t:.0%} of LoRA's epoch; "
          f"ViT-B stand-in: {tl / tm:.0%} of LoRA's step | "
          f"{'same way' if max(tiny_t, tl / tm) < 1 else 'mixed' if min(tiny_t, tl / tm) < 1 else 'the other way'} |")
    sign = "higher" if c.mean_diff > 0 else "lower"
    verdict = f"{sign}, {'significant' if p < 0.05 else 'not significant'} after Holm"
    points = ("same way" if sign == "higher" else "the other way") + ("" if p < 0.05 else " (not significant)")
    print(f"| higher accuracy than PEFT | vit-tiny → digits: {100 * c.mean_diff:+.1f} pp vs LoRA "
          f"(p_Holm = {p:.2g}; {verdict}) | {points} |")
    print("\nThe papers measure GPU memory and time on ViT-B/16 with VTAB-1K; these are CPU numbers with one thread "
          "(memory: what training holds, not the allocator's peak), tiny data and an mnist-pretrained backbone.")


def _run(seeds, epochs: int) -> None:
    t0 = time.perf_counter()
    df, summ = tiny_table(list(seeds), epochs)
    tests = _paired(df)
    model_b, _, _, vitb_rows = vitb()
    kway_tiny()
    kway_vitb(model_b)
    bytes_table(craftlab.create_model("vit-tiny", num_classes=10, progress=False), model_b)
    claims(summ, tests, vitb_rows)
    print(f"\n(benchmark wall time {time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} torch thread(s))")
    RESULTS.mkdir(exist_ok=True)
    df.to_csv(RESULTS / "adapt.csv", index=False)


def main(seeds=(0, 1, 2), epochs: int = 8) -> None:
    """Print the benchmark as markdown and save it to benchmarks/results/adapt.md (progress lines left out)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _run(seeds, epochs)
    text = buf.getvalue()
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adapt.md").write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("  ")) + "\n")


if __name__ == "__main__":
    main()
