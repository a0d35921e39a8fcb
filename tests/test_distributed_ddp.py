"""Data-parallel fine-tuning: 2 gloo processes under torchrun against single-process references.

One ``torchrun --nproc_per_node 2`` launch runs every data-parallel fine-tune of this module (a script written
to a temp folder); the references run here, in one process: the plain run on the same global batch, and an
independent m-sharpness SAM step written out by hand.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import craftlab

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    import craftlab
    from craftlab.train.ddp import current_world

    out = Path(sys.argv[1])
    x, y = craftlab.load_data("digits").train_set.tensors
    data = craftlab.from_tensors(x[:300], y[:300], name="digits300", batch_size=32)
    world = current_world()
    vit = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    resnet = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    runs = {"adamw": (vit, {}), "sam-local": (vit, {"sam_rho": 0.05}),
            "sam-sync": (vit, {"sam_rho": 0.05, "sam_sync_first": True}),
            "resnet-sam": (resnet, {"sam_rho": 0.05}), "sam-bf16": (vit, {"sam_rho": 0.05, "amp": "bf16"}),
            "resnet-adamw": (resnet, {}), "resnet-syncbn": (resnet, {"sync_bn": True}),
            "resnet-sam-syncbn": (resnet, {"sam_rho": 0.05, "sam_sync_first": True, "sync_bn": True})}
    for name, (model, kw) in runs.items():
        res = craftlab.finetune(model, data, epochs=1, progress=False, **kw)
        torch.save({k: v.detach() for k, v in res.model.state_dict().items()}, out / f"{name}-{world.rank}.pt")
        if name == "adamw":
            res.save(out / "ckpt")
            (out / f"history-{world.rank}.json").write_text(json.dumps([res.history, res.config["world_size"]]))
    try:
        craftlab.finetune(vit, data, epochs=1, batch_size=33, progress=False)
    except ValueError as err:
        (out / f"error-{world.rank}.txt").write_text(str(err))
""")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the script on 2 gloo ranks; the folder of what they wrote."""
    out = tmp_path_factory.mktemp("ddp")
    script = out / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRAFTLAB_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _assert_close(a: dict, b: dict, atol: float = 1e-4, steps: int = 6, lr: float = 1e-3) -> None:
    """Equal to float tolerance (Adam divides by sqrt(v): an element whose gradient is near 0 at some step moves
    a rounding difference up to ~lr/10; typical differences are ~1e-6). The attention's key bias (the middle
    third of ``qkv.bias``) is held to a looser bound: softmax ignores it, so its gradient is rounding noise
    (~1e-9) that Adam's normalisation turns into steps of up to ±lr whose sign differs between any two
    summation orders; it must stay within lr per step."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].clone(), b[k].clone()
        if k.endswith("attn.qkv.bias"):
            dim = len(x) // 3
            assert (x[dim:2 * dim] - y[dim:2 * dim]).abs().max() <= 2 * lr * steps
            x[dim:2 * dim] = y[dim:2 * dim]
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", ["adamw", "sam-local", "sam-sync", "resnet-sam", "sam-bf16", "resnet-adamw",
                                  "resnet-syncbn", "resnet-sam-syncbn"])
def test_ranks_end_identical(ranks, name):
    r0, r1 = _load(ranks / f"{name}-0.pt"), _load(ranks / f"{name}-1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{name}: {k} differs between ranks"
        assert torch.isfinite(r0[k].float()).all()


def test_adamw_on_2_ranks_equals_one_process_on_the_same_global_batch(ranks, small):
    torch.set_num_threads(1)
    vit = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    single = craftlab.finetune(vit, small, epochs=1, progress=False)
    _assert_close(_load(ranks / "adamw-0.pt"), single.model.state_dict())
    # the epoch statistics are the global batch's, on every rank
    import json

    hist, world_size = json.loads((ranks / "history-0.json").read_text())
    other = json.loads((ranks / "history-1.json").read_text())[0]
    assert world_size == 2 and [{**h, "time_s": 0} for h in hist] == [{**h, "time_s": 0} for h in other]
    assert hist[0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], rel=1e-5)
    assert hist[0]["train_accuracy"] == pytest.approx(single.history[0]["train_accuracy"])
    # the checkpoint (written by rank 0 only) holds the trained weights, no temp file left behind
    ckpt = craftlab.load_checkpoint(ranks / "ckpt")
    _assert_close(ckpt.state_dict(), single.model.state_dict())
    assert sorted(p.name for p in (ranks / "ckpt").iterdir()) == ["craftlab.json", "model.safetensors"]


def test_sam_with_all_reduced_first_gradient_equals_one_process_sam(ranks, small):
    torch.set_num_threads(1)
    vit = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    single = craftlab.finetune(vit, small, epochs=1, sam_rho=0.05, progress=False)
    _assert_close(_load(ranks / "sam-sync-0.pt"), single.model.state_dict())


def _m_sharpness_reference(model, data, rho: float, shards: int = 2) -> dict[str, torch.Tensor]:
    """SAM with each shard of every batch perturbed by its own gradient, written out by hand (one process):
    AdamW on the cosine schedule, one epoch, the shard gradients at their perturbed points averaged by size."""
    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    loader = data.loader("train", shuffle=True, seed=0)
    steps = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for x, y in loader:
        total = [torch.zeros_like(p) for p in params]
        for idx in torch.tensor_split(torch.arange(len(y)), shards):
            g = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
            norm = torch.stack([gi.norm() for gi in g]).norm()
            eps = [rho * gi / norm for gi in g]
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.add_(e)
            g2 = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
            for t, gi in zip(total, g2):
                t += gi * (len(idx) / len(y))
        for p, t in zip(params, total):
            p.grad = t
        opt.step()
        opt.zero_grad()
        sched.step()
    return model.state_dict()


def test_sam_default_perturbs_each_replica_by_its_local_gradient(ranks, small):
    torch.set_num_threads(1)
    vit = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    local = _load(ranks / "sam-local-0.pt")
    _assert_close(local, _m_sharpness_reference(vit, small, rho=0.05))
    synced = _load(ranks / "sam-sync-0.pt")
    assert any(not torch.allclose(local[k], synced[k], atol=1e-6) for k in local), "the two SAM modes agree"


def _max_diff(a: dict, b: dict) -> dict[str, float]:
    """Largest |a - b| over the parameters, and the largest relative difference of the BN running variances."""
    params = max((a[k].float() - b[k].float()).abs().max().item() for k in a
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    rv = max(((a[k] - b[k]).abs() / b[k].abs()).max().item() for k in a if k.endswith("running_var"))
    return {"params": params, "running_var_rel": rv}


SYNC_BN_ATOL = 1e-4
"""sync_bn vs one process: float tolerance (summation order of the all-reduced statistics and gradients, then
Adam's normalisation), the same bound as the LayerNorm model's AdamW test (measured: 4.9e-6)."""
SYNC_BN_SAM_ATOL = 1e-3
"""The same with SAM (sam_sync_first): the ascent direction g/|g| and Adam's division by sqrt(v) amplify
rounding differences on near-zero gradients (measured: 7.9e-5 on parameters, 8.4e-5 on running variances)."""


def test_batchnorm_under_ddp_equals_one_process_only_with_sync_bn(ranks, small):
    """resnet-tiny, AdamW, one epoch at global batch 32 = 2 x 16: with sync_bn the BatchNorm statistics are the
    global batch's and the run is the one-process run; without it each replica normalises over its 16 examples
    and the model differs (documented in docs/scale_out.md; measured in benchmarks/RESULTS.md `scale`)."""
    torch.set_num_threads(1)
    resnet = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    single = craftlab.finetune(resnet, small, epochs=1, progress=False).model.state_dict()
    synced, plain = _load(ranks / "resnet-syncbn-0.pt"), _load(ranks / "resnet-adamw-0.pt")
    d_sync, d_plain = _max_diff(synced, single), _max_diff(plain, single)
    print(f"resnet-tiny DDP vs one process: sync_bn {d_sync}, per-replica BN {d_plain}")
    assert d_sync["params"] <= SYNC_BN_ATOL and d_sync["running_var_rel"] <= 1e-4
    torch.testing.assert_close(synced, single, atol=SYNC_BN_ATOL, rtol=1e-4)
    assert d_plain["params"] > 10 * SYNC_BN_ATOL and d_plain["running_var_rel"] > 1e-2
    # SAM with the all-reduced first gradient and sync_bn: the one-process SAM run
    sam = craftlab.finetune(resnet, small, epochs=1, sam_rho=0.05, progress=False).model.state_dict()
    d_sam = _max_diff(_load(ranks / "resnet-sam-syncbn-0.pt"), sam)
    print(f"resnet-tiny DDP SAM (sam_sync_first, sync_bn) vs one process: {d_sam}")
    assert d_sam["params"] <= SYNC_BN_SAM_ATOL and d_sam["running_var_rel"] <= SYNC_BN_SAM_ATOL
    # the checkpointable model holds plain BatchNorm layers again
    ddp_model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    ddp_model.load_state_dict(synced)
    assert not any("Sync" in type(m).__name__ for m in ddp_model.modules())


def test_cli_finetune_under_torchrun_prints_and_evaluates_on_rank_0_only(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRAFTLAB_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "craftlab.cli", "finetune", "--model", "resnet-tiny", "--data", "digits", "--epochs", "1", "--sync-bn",
           "--quiet", "--json", "--out", str(tmp_path / "ckpt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    import json

    res = json.loads(lines[0])
    meta = craftlab.load_checkpoint(tmp_path / "ckpt").craftlab_meta
    assert res["test_accuracy"] == meta["metrics"]["test_accuracy"]
    assert meta["world_size"] == 2 and meta["sync_bn"] is True


def test_batch_size_not_divisible_by_world_size_is_a_clear_error(ranks):
    for rank in (0, 1):
        msg = (ranks / f"error-{rank}.txt").read_text()
        assert "batch_size 33 is not divisible by the world size 2" in msg and "34" in msg


def test_single_process_ignores_the_ddp_option(small):
    torch.set_num_threads(1)
    vit = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    a = craftlab.finetune(vit, small, epochs=1, sam_rho=0.05, progress=False)
    b = craftlab.finetune(vit, small, epochs=1, sam_rho=0.05, progress=False, sam_sync_first=True)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    assert "world_size" not in a.config
    with pytest.raises(ValueError, match="sam_sync_first"):
        craftlab.finetune(vit, small, epochs=1, sam_sync_first="yes")
