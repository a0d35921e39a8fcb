"""Sweep cells without a cluster: the code version in cell keys, the uncompressed evaluation done once per model,
RunSpec's AMP option, and the accelerate ``--cpu`` trap."""

from __future__ import annotations

import shutil

import pytest
import torch

import craftlab
from craftlab.distributed import cells
from craftlab.settings import make_setting
from craftlab.train.runs import RunSpec, get_run, is_cached


def test_cell_keys_carry_the_code_version(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    shutil.copytree(cells.Path(cells.__file__).resolve().parent.parent / "compression", pkg / "compression")
    for name in ("evaluation.py", "settings.py"):
        shutil.copy(cells.Path(craftlab.__file__).parent / name, pkg / name)
    (pkg / "distributed").mkdir()
    shutil.copy(cells.__file__, pkg / "distributed" / "cells.py")
    before = cells.code_version(str(pkg))
    assert before == cells.code_version(str(pkg)) and len(before) == 16
    with open(pkg / "compression" / "prune.py", "a") as f:
        f.write("\n# an edit\n")
    assert cells.code_version.__wrapped__(str(pkg)) != before  # uncached: the edited sources hash differently
    s = make_setting("wanda", 0.5)
    key = cells.cell_key("weights:abc", "data:def", "test", s)
    monkeypatch.setattr(cells, "code_version", lambda: "another-version")
    assert cells.cell_key("weights:abc", "data:def", "test", s) != key


def test_the_uncompressed_model_is_evaluated_once_per_model(monkeypatch, digits):
    import craftlab.compression.pipeline as pipeline
    import craftlab.evaluation as evaluation

    model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    settings = ["FP32", "magnitude 50%", "W8A8"]
    direct = [craftlab.compress_and_evaluate(model, digits, setting=s) for s in settings]
    calls = []
    real = evaluation.evaluate

    def counting(m, *args, **kwargs):
        calls.append(m is model)
        return real(m, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", counting)
    monkeypatch.setattr(pipeline, "evaluate", counting)
    df = craftlab.sweep({"r": model}, digits, settings=settings, progress=False)
    assert calls.count(True) == 1 and len(calls) == 1 + len(settings)  # was 2 per setting
    for (_, row), ref in zip(df.iterrows(), direct):
        assert (row["fp_accuracy"], row["accuracy"], row["loss"]) == (ref["fp_accuracy"], ref["accuracy"],
                                                                      ref["loss"])


def test_runspec_amp_changes_the_key_only_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path))
    plain = RunSpec("resnet-tiny", "digits", epochs=1)
    assert plain.key == "resnet-tiny-digits-adamw-e1-s0" and "amp" not in plain.record()  # as before the field
    bf16 = RunSpec("resnet-tiny", "digits", epochs=1, amp="bf16")
    assert bf16.key == "resnet-tiny-digits-adamw-bf16-e1-s0" and bf16.record()["amp"] == "bf16"
    with pytest.raises(ValueError, match="amp must be"):
        RunSpec(amp="fp8")
    meta = craftlab.load_checkpoint(get_run(bf16, progress=False)).craftlab_meta
    assert meta["amp"] == "bf16" and meta["run"] == bf16.record()
    assert is_cached(bf16) and not is_cached(plain)


def test_accelerate_cpu_launch_of_one_process_is_reported(monkeypatch, small):
    from craftlab.train.ddp import current_world

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    with pytest.warns(RuntimeWarning, match=r"ONE process.*torchrun"):
        assert current_world() is None
    torch.set_num_threads(1)
    with pytest.warns(RuntimeWarning, match="ONE process"):
        craftlab.finetune(craftlab.create_model("resnet-tiny", num_classes=10, progress=False), small, epochs=1,
                          progress=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert current_world() is None
