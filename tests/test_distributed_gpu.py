"""GPU scheduling of Ray sweeps on a fake-GPU local cluster: ``ray.init(num_gpus=2)`` declares GPU resources only
(nothing runs on CUDA here: the workers find no device and train on the CPU), which is all Ray's scheduler sees.
Where a cell runs once it has a GPU is :func:`~craftlab.distributed.cells.cell_device`, tested on its own; the
cells on a real GPU are in ``benchmarks/gpu_check.py`` (``check_sweep_cells``).
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

import craftlab
from craftlab.train.runs import RunSpec

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def fake_gpus():
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


def test_each_gpu_fine_tune_runs_in_its_own_worker_process(fake_gpus, tmp_path, monkeypatch, digits):
    """``max_calls=1`` in the decorator: a finished fine-tune's process exits (on a GPU: its CUDA memory and device
    go with it); set through ``.options()`` Ray ignores it and reuses the worker."""
    specs = {f"s{seed}": RunSpec("resnet-tiny", "digits", epochs=1, seed=seed) for seed in range(3)}
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "ray"))
    df = craftlab.sweep(specs, digits, settings=["FP32"], progress=False, engine="ray")
    runs = df.attrs["runs"]
    assert sorted(runs) == sorted(specs)
    assert all(r["gpu_ids"] for r in runs.values())  # each took a GPU
    pids = [r["pid"] for r in runs.values()]
    assert len(set(pids)) == len(pids), f"GPU fine-tunes shared worker processes: {pids}"
    assert os.getpid() not in pids
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "here"))
    ref = craftlab.sweep(specs, digits, settings=["FP32"], progress=False)
    pd.testing.assert_frame_equal(df, ref, check_exact=True)


def test_fine_tune_slots_follow_the_cluster():
    from craftlab.distributed.ray_engine import _finetune_slots

    assert _finetune_slots({"CPU": 2, "GPU": 2}, 1) == (2, True)
    assert _finetune_slots({"CPU": 2}, 1) == (2, False)
    assert _finetune_slots({"CPU": 2}, 4) == (1, False)
    assert _finetune_slots({"CPU": 64, "GPU": 8.0}, 8) == (8, True)


def test_cells_take_a_share_of_a_gpu_in_single_use_processes_and_equal_the_in_process_table(
        fake_gpus, tmp_path, monkeypatch, digits):
    """On a cluster with GPUs the compression/evaluation cells ask for half a GPU each (two per GPU) and run in
    single-use worker processes; without CUDA (this machine) each falls back to the CPU and says so. The table is
    the in-process one; ``gpus_per_cell=0`` keeps them on CPUs, with no GPU."""
    from craftlab.checkpoint import save_checkpoint

    model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    ckpt = str(save_checkpoint(model, tmp_path / "ckpt", {"data": {"name": "digits"}}))
    settings = ["FP32", "magnitude 50%", "W8A8"]
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "here"))
    ref = craftlab.sweep([ckpt], digits, settings=settings, progress=False)
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "gpu"))
    df = craftlab.sweep([ckpt], digits, settings=settings, progress=False, engine="ray")
    pd.testing.assert_frame_equal(df, ref, check_exact=True)
    placed = df.attrs["placement"]
    assert sorted(p["setting"] for p in placed) == sorted(ref["setting"])
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert all(p["gpu_ids"] and p["device"] == expected for p in placed), placed
    pids = [p["pid"] for p in placed]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids, f"GPU cells shared worker processes: {pids}"
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "cpu"))
    on_cpu = craftlab.sweep([ckpt], digits, settings=settings, progress=False, engine="ray", gpus_per_cell=0)
    pd.testing.assert_frame_equal(on_cpu, ref, check_exact=True)
    assert all(not p["gpu_ids"] and p["device"] == "cpu" for p in on_cpu.attrs["placement"])


def test_gpus_per_cell_follows_the_cluster_and_refuses_bad_values(fake_gpus, digits):
    from craftlab.distributed.cells import cell_device
    from craftlab.distributed.ray_engine import gpus_per_cell_for

    assert gpus_per_cell_for(None, {"CPU": 2, "GPU": 2}) == 0.5
    assert gpus_per_cell_for(None, {"CPU": 2}) == 0
    assert gpus_per_cell_for(1, {"CPU": 2, "GPU": 1}) == 1
    with pytest.raises(ValueError, match="the Ray cluster has no GPUs"):
        gpus_per_cell_for(0.5, {"CPU": 2})
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(ValueError, match="gpus_per_cell must be between 0 and 1"):
            craftlab.sweep({"m": craftlab.create_model("resnet-tiny", num_classes=10, progress=False)}, digits,
                           settings=["FP32"], progress=False, engine="ray", gpus_per_cell=bad)
    with pytest.raises(ValueError, match="is for engine='ray'"):
        craftlab.sweep({}, digits, settings=["FP32"], gpus_per_cell=0.5)
    assert cell_device(["0"], True) == "cuda"
    assert cell_device(["0"], False) == "cpu"  # a GPU resource without CUDA: the CPU, recorded
    assert cell_device([], True) == "cpu"  # no GPU given to the task: never the process's default device
