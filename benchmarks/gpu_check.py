"""A prepared GPU check (≤ 5 minutes on one GPU): the CUDA paths that CPU runs never exercise.

1. **AMP fine-tuning.** From the same weights and batch, in fp32, bf16 autocast and fp16 autocast with a loss
   scale: the gradient AdamW steps with (∇L(w)) and the one SAM steps with (∇L(w + ε), ρ = 0.05), each against
   fp32's (cosine ≥ 0.98, relative norm difference ≤ 10 %), and the loss (relative difference ≤ 2 %); then one
   epoch of ``craftlab.finetune`` per mode (fp16 with its GradScaler) on a 512-image digits slice, AdamW and
   SAM: validation accuracy within 5 points of fp32.
2. **channels_last** for resnet-tiny: logits equal to the contiguous model's (max relative difference ≤ 1e-3,
   TF32 off) and the training step time of both layouts.
3. **Hessian-vector products under fused attention**: a raw double backward through the default (fused) SDPA
   kernel is tried (refused or not: printed), and ``top_hessian_eigenvalues`` on vit-tiny — routed to math
   attention — on CUDA against the same call on the CPU (λ1 within 1 %).
4. **2-rank NCCL DDP on one GPU**: two processes on cuda:0 all-reduce a tensor and take a DDP step; NCCL
   usually refuses two ranks on one device: then a clear skip with the reason.
5. Timings: ms per training step, fp32 / bf16 / fp16, AdamW and SAM, on vit-tiny and resnet-tiny (batch 64).

Run: ``python benchmarks/gpu_check.py`` — prints a one-screen summary, writes benchmarks/results/gpu_check.json,
exits 0 when every check passed or was skipped (1 when one failed). Without CUDA it prints
``no CUDA device: skipped`` and exits 0.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
TOL = {"grad_cosine": 0.98, "grad_rel_norm": 0.10, "loss_rel": 0.02, "finetune_acc_pts": 5.0,
       "channels_last_rel": 1e-3, "hessian_rel": 0.01}


def _batch(n: int = 64, split: str = "train"):
    import craftlab

    data = craftlab.load_data("digits")
    return next(iter(data.loader(split, batch_size=n, shuffle=False)))


def _one_step(model, x, y, sam: bool, amp: str | None) -> tuple[float, torch.Tensor]:
    """Loss and the flat gradient the base optimizer steps with (AdamW: ∇L(w); SAM: ∇L(w + ε)), unscaled.

    Gradients are compared rather than Adam's first update, which is lr·sign(g) elementwise: the sign of a tiny
    gradient entry flips under any rounding, so the update would differ without anything being wrong."""
    from craftlab.train.sam import SAM, frozen_bn

    model = copy.deepcopy(model).cuda().train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = SAM(params, torch.optim.AdamW, rho=0.05, lr=1e-3, model=model) if sam else None
    scale = 1024.0 if amp == "fp16" else 1.0  # a fixed loss scale, as GradScaler's once it has settled
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def loss_of():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            return F.cross_entropy(model(x).float(), y)

    loss = loss_of()
    (loss * scale).backward()
    if sam:
        opt.first_step(zero_grad=True)  # ε = ρ g/‖g‖ does not depend on the scale
        with frozen_bn(model):
            (loss_of() * scale).backward()
    grad = torch.cat([p.grad.detach().flatten() for p in params]).double() / scale
    return float(loss), grad


def check_amp(out: dict[str, Any]) -> list[str]:
    import craftlab

    fails = []
    x, y = (t.cuda() for t in _batch())
    for name in ("vit-tiny", "resnet-tiny"):
        model = craftlab.create_model(name, num_classes=10, progress=False)
        for sam in (False, True):
            ref_loss, ref_du = _one_step(model, x, y, sam, None)
            for amp in ("bf16", "fp16"):
                loss, du = _one_step(model, x, y, sam, amp)
                cos = float(torch.dot(du, ref_du) / (du.norm() * ref_du.norm() + 1e-30))
                rel = float((du - ref_du).norm() / (ref_du.norm() + 1e-30))
                lrel = abs(loss - ref_loss) / abs(ref_loss)
                ok = cos >= TOL["grad_cosine"] and rel <= TOL["grad_rel_norm"] and lrel <= TOL["loss_rel"]
                key = f"{name} {'SAM' if sam else 'AdamW'} {amp}"
                out["amp_step"][key] = {"cosine": cos, "rel_norm": rel, "loss_rel": lrel, "ok": ok}
                if not ok:
                    fails.append(f"AMP gradient {key}: cosine {cos:.4f}, rel {rel:.3f}, loss rel {lrel:.4f}")
    data = craftlab.load_data("digits")
    xs, ys = data.train_set.tensors
    small = craftlab.from_tensors(xs[:512], ys[:512], name="digits512", batch_size=64)
    model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    for sam_rho in (0.0, 0.05):
        accs = {}
        for amp in (None, "bf16", "fp16"):
            res = craftlab.finetune(model, small, epochs=1, sam_rho=sam_rho, amp=amp, device="cuda", progress=False)
            accs[amp or "fp32"] = 100 * res.history[-1]["val_accuracy"]
        arm = "SAM" if sam_rho else "AdamW"
        out["amp_finetune"][arm] = accs
        for amp in ("bf16", "fp16"):
            if abs(accs[amp] - accs["fp32"]) > TOL["finetune_acc_pts"]:
                fails.append(f"finetune {arm} {amp}: val acc {accs[amp]:.1f} vs fp32 {accs['fp32']:.1f}")
    return fails


def check_channels_last(out: dict[str, Any]) -> list[str]:
    import craftlab

    x, y = (t.cuda() for t in _batch())
    model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False).cuda().eval()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = model(x), cl(x.to(memory_format=torch.channels_last))
    rel = float((a - b).abs().max() / a.abs().max())
    out["channels_last"] = {"max_rel_diff": rel}
    for label, m, inp in (("contiguous", model, x), ("channels_last", cl, x.to(memory_format=torch.channels_last))):
        out["channels_last"][f"{label}_step_ms"] = _time_steps(m, inp, y)
    return [] if rel <= TOL["channels_last_rel"] else [f"channels_last logits differ: max rel {rel:.2e}"]


def _time_steps(model, x, y, steps: int = 20, amp: str | None = None, sam: bool = False) -> float:
    from craftlab.train.sam import SAM, frozen_bn

    model = copy.deepcopy(model).train()
    params = list(model.parameters())
    opt = SAM(params, torch.optim.AdamW, rho=0.05, lr=1e-4, model=model) if sam else torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def backward():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        (scaler.scale(loss) if scaler else loss).backward()

    def step():
        backward()
        if sam:
            opt.first_step(zero_grad=True)
            with frozen_bn(model):
                backward()
            opt.second_step(zero_grad=True, scaler=scaler)
        else:
            scaler.step(opt) if scaler else opt.step()
            opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.update()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / steps


def check_hessian(out: dict[str, Any]) -> list[str]:
    import craftlab
    from craftlab.probes.hessian import top_hessian_eigenvalues

    x, y = _batch(128, "val")
    model = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    gpu = copy.deepcopy(model).cuda().eval()
    try:  # a raw double backward through the default (fused) attention kernel
        loss = F.cross_entropy(gpu(x.cuda()), y.cuda())
        g = torch.autograd.grad(loss, list(gpu.parameters()), create_graph=True)
        torch.autograd.grad(sum((t * t).sum() for t in g), list(gpu.parameters()))
        out["hessian"]["fused_double_backward"] = "ran"
    except RuntimeError as err:
        out["hessian"]["fused_double_backward"] = f"refused: {str(err).splitlines()[0][:100]}"
    t0 = time.perf_counter()
    on_gpu = top_hessian_eigenvalues(gpu, (x.cuda(), y.cuda()), k=1, tol=1e-4)
    t_gpu = time.perf_counter() - t0
    on_cpu = top_hessian_eigenvalues(model, (x, y), k=1, tol=1e-4)
    rel = abs(on_gpu.eigenvalues[0] - on_cpu.eigenvalues[0]) / abs(on_cpu.eigenvalues[0])
    out["hessian"].update(lambda_gpu=on_gpu.eigenvalues[0], lambda_cpu=on_cpu.eigenvalues[0], rel=rel,
                          gpu_s=t_gpu, n_hvp=on_gpu.n_hvp)
    return [] if rel <= TOL["hessian_rel"] else [f"Hessian lambda1 GPU {on_gpu.eigenvalues[0]:.4g} vs CPU "
                                                 f"{on_cpu.eigenvalues[0]:.4g}"]


def _ddp_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl", rank=rank, world_size=2)
        torch.cuda.set_device(0)
        t = torch.full((4,), float(rank + 1), device="cuda")
        dist.all_reduce(t)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 2).cuda(), device_ids=[0])
        model(torch.randn(16, 8, device="cuda")).sum().backward()
        torch.cuda.synchronize()
        queue.put((rank, "ok", float(t[0])))
        dist.destroy_process_group()
    except Exception as err:  # noqa: BLE001 - reported to the parent as the reason for the skip
        queue.put((rank, "error", f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"))


def check_ddp(out: dict[str, Any]) -> list[str]:
    import socket

    import torch.multiprocessing as mp

    if not torch.distributed.is_nccl_available():
        out["ddp"] = "skipped: this torch build has no NCCL"
        return []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = []
    deadline = time.time() + 90
    while len(results) < 2 and time.time() < deadline:
        try:
            results.append(queue.get(timeout=5))
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting until the deadline
            if not any(p.is_alive() for p in procs):
                break
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    if len(results) == 2 and all(r[1] == "ok" and r[2] == 3.0 for r in results):
        out["ddp"] = "2-rank NCCL on one GPU: all_reduce = 3 on both ranks, DDP step ran"
        return []
    reason = "; ".join(str(r[2]) for r in results if r[1] == "error") or "no answer within 90 s"
    out["ddp"] = f"skipped: NCCL refused 2 ranks on one GPU ({reason})"
    return []


def check_sweep_cells(out: dict[str, Any]) -> list[str]:
    """Ray sweep cells on the GPU (issue 23): a local cluster with this GPU, a resnet-tiny checkpoint x 4 settings
    with ``engine="ray"`` (cells take half a GPU each, in single-use processes) against the in-process table on
    the CPU: every cell on ``cuda``, accuracies within 1 point (GPU kernels round differently)."""
    import tempfile

    import ray

    import craftlab
    from craftlab.checkpoint import save_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-cells-"))
    os.environ["CRAFTLAB_HOME"] = str(tmp / "home")
    data = craftlab.load_data("digits")
    ckpt = str(save_checkpoint(craftlab.create_model("resnet-tiny", num_classes=10, progress=False), tmp / "ckpt",
                               {"data": {"name": "digits"}}))
    settings = ["FP32", "magnitude 50%", "W8A8", "W4A8"]
    t0 = time.perf_counter()
    ref = craftlab.sweep([ckpt], data, settings=settings, progress=False)
    t_cpu = time.perf_counter() - t0
    os.environ["CRAFTLAB_HOME"] = str(tmp / "ray")
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        t0 = time.perf_counter()
        df = craftlab.sweep([ckpt], data, settings=settings, progress=False, engine="ray")
        t_gpu = time.perf_counter() - t0
    finally:
        ray.shutdown()
    placed = df.attrs["placement"]
    diff = {c: float((df[c] - ref[c]).abs().max()) for c in ("fp_accuracy", "accuracy")}
    pids = [p["pid"] for p in placed]
    out["sweep_cells"] = {"devices": sorted({p["device"] for p in placed}), "distinct_pids": len(set(pids)),
                          "cells": len(placed), "max_abs_diff": diff, "ray_gpu_s": t_gpu, "process_cpu_s": t_cpu}
    fails = []
    if {p["device"] for p in placed} != {"cuda"} or len(set(pids)) != len(pids):
        fails.append(f"sweep cells: devices {out['sweep_cells']['devices']}, {len(set(pids))} processes for "
                     f"{len(pids)} cells")
    if list(df["setting"]) != list(ref["setting"]) or max(diff.values()) > 0.01:
        fails.append(f"sweep cells on GPU vs CPU: {diff}")
    return fails


def main(argv: list[str] | None = None) -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    import craftlab

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    t_start = time.perf_counter()
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "tolerances": TOL,
                           "amp_step": {}, "amp_finetune": {}, "hessian": {}, "timings_ms": {}}
    fails: list[str] = []
    for check in (check_amp, check_channels_last, check_hessian, check_ddp, check_sweep_cells):
        t0 = time.perf_counter()
        try:
            fails += check(out)
        except Exception as err:  # noqa: BLE001 - a crashed check is a failed check, the others still run
            fails.append(f"{check.__name__} crashed: {type(err).__name__}: {str(err).splitlines()[0][:150]}")
        out[f"{check.__name__}_s"] = time.perf_counter() - t0
    x, y = (t.cuda() for t in _batch())
    for name in ("vit-tiny", "resnet-tiny"):
        model = craftlab.create_model(name, num_classes=10, progress=False).cuda()
        for amp in (None, "bf16", "fp16"):
            for sam in (False, True):
                out["timings_ms"][f"{name} {'SAM' if sam else 'AdamW'} {amp or 'fp32'}"] = _time_steps(
                    model, x, y, amp=amp, sam=sam)
    out["total_s"], out["failures"] = time.perf_counter() - t_start, fails
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))

    print(f"GPU check on {out['device']} (torch {out['torch']}), {out['total_s']:.0f} s")
    print("AMP gradient vs fp32 (cosine, rel. norm diff, loss rel. diff):")
    for k, v in out["amp_step"].items():
        print(f"  {k:24s} {v['cosine']:.4f}  {v['rel_norm']:.3f}  {v['loss_rel']:.4f}  {'ok' if v['ok'] else 'FAIL'}")
    for arm, accs in out["amp_finetune"].items():
        print(f"  finetune 1 epoch {arm}: val acc " + ", ".join(f"{k} {v:.1f}" for k, v in accs.items()))
    cl = out.get("channels_last", {})
    if cl:
        print(f"channels_last: max rel diff {cl['max_rel_diff']:.1e}; step {cl['contiguous_step_ms']:.1f} ms "
              f"contiguous vs {cl['channels_last_step_ms']:.1f} ms channels_last")
    h = out["hessian"]
    if "rel" in h:
        print(f"Hessian: fused SDPA double backward {h['fused_double_backward']}; lambda1 GPU {h['lambda_gpu']:.5g} "
              f"vs CPU {h['lambda_cpu']:.5g} (rel {h['rel']:.1e}), {h['n_hvp']} HVPs in {h['gpu_s']:.1f} s")
    print(f"DDP: {out.get('ddp')}")
    print("ms per step (batch 64):")
    for k, v in out["timings_ms"].items():
        print(f"  {k:28s} {v:7.2f}")
    print("FAILED: " + " | ".join(fails) if fails else "all checks passed (or skipped with a reason)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
