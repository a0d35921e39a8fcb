"""GPU scheduling of Ray sweeps on a fake-GPU local cluster: ``ray.init(num_gpus=2)`` declares GPU resources only
(nothing runs on CUDA here: the workers find no device and train on the CPU), which is all Ray's scheduler sees.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

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
