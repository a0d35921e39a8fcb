"""Sweeps on Ray: one local cluster (2 CPUs, no dashboard) for the module, compared with the in-process engine.

The reference of every Ray table is the in-process table of the same models and settings (same seeds, one
thread, deterministic CPU kernels: the numbers are equal, not close).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest

import craftlab
from craftlab.train.runs import RunSpec

ray = pytest.importorskip("ray")

SETTINGS = ["FP32", "magnitude 50%", "wanda 50%", "W8A8", "W4A4"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster, started once (~10 s, ~0.8 GB per worker); its address for other drivers."""
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh CRAFTLAB_HOME for one test (the workers are told the driver's)."""
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, digits):
    """Two fine-tuned vit-tiny checkpoints (AdamW and SAM, 1 epoch)."""
    folder = tmp_path_factory.mktemp("ckpt")
    vit = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    return [str(craftlab.finetune(vit, digits, epochs=1, sam_rho=rho, progress=False).save(folder / name))
            for name, rho in (("adamw", 0.0), ("sam", 0.05))]


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory):
    """The zoo's resnet-tiny with a 10-class head, as a checkpoint (RepQ-ViT refuses it: a failing cell)."""
    from craftlab.checkpoint import save_checkpoint

    model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
    return str(save_checkpoint(model, tmp_path_factory.mktemp("resnet") / "resnet", {"data": {"name": "digits"}}))


def _cells(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (home / "sweeps" / "cells").glob("*.json")}


def test_ray_sweep_of_run_specs_equals_the_in_process_table(cluster, tmp_path, monkeypatch, digits):
    specs = {"AdamW": RunSpec("vit-tiny", "digits", epochs=1), "SAM": RunSpec("vit-tiny", "digits", epochs=1,
                                                                              sam_rho=0.05)}
    extra = {"SAM": {"rho": 0.05}, "AdamW": {"rho": 0.0}}
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "here"))  # fine-tuned in this process
    ref = craftlab.sweep(specs, digits, settings=SETTINGS, progress=False, extra_columns=extra)
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path / "ray"))  # fine-tuned again, in Ray workers
    df = craftlab.sweep(specs, digits, settings=SETTINGS, progress=False, extra_columns=extra, engine="ray")
    pd.testing.assert_frame_equal(df, ref, check_exact=True)
    assert df.attrs["cells"] == {"computed": 10, "cached": 0, "total": 10}
    assert sorted(p.name for p in (tmp_path / "ray" / "runs").iterdir()) == sorted(s.key for s in specs.values())
    # a second call finds every cell done: nothing is submitted, the table is the same
    again = craftlab.sweep(specs, digits, settings=SETTINGS, progress=False, extra_columns=extra, engine="ray")
    pd.testing.assert_frame_equal(again, ref, check_exact=True)
    assert again.attrs["cells"] == {"computed": 0, "cached": 10, "total": 10}


def test_a_killed_sweep_resumes_without_recomputing_finished_cells(cluster, home, checkpoints, digits):
    """A CLI driver on the same cluster is killed (SIGKILL) once a few cells are done; the restart computes the
    rest only, and the table equals the in-process one."""
    grid = ["--methods", "magnitude", "wanda", "--sparsities", "0.5", "0.7", "--patterns", "--bits", "8,8", "4,4"]
    cmd = [sys.executable, "-m", "craftlab.cli", "sweep", "--checkpoint", *checkpoints, *grid, "--engine", "ray",
           "--address", cluster, "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "CRAFTLAB_HOME": str(home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_cells(home)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    assert proc.wait() != 0, "the sweep finished before it could be interrupted: " + proc.stderr.read()[-2000:]
    before, t_end = _cells(home), time.monotonic() + 15
    while time.monotonic() < t_end:  # Ray cancels the dead driver's tasks; wait until no cell lands any more
        time.sleep(1.0)
        now = _cells(home)
        if now == before:
            break
        before = now
    settings = craftlab.settings_grid(methods=["magnitude", "wanda"], sparsities=[0.5, 0.7], patterns=[],
                                      bits=[(8, 8), (4, 4)])
    assert 0 < len(before) < 2 * len(settings)
    models = {c: craftlab.load_checkpoint(c) for c in checkpoints}  # what the CLI sweeps
    df = craftlab.sweep(models, digits, settings=settings, progress=False, engine="ray")
    assert df.attrs["cells"] == {"computed": 2 * len(settings) - len(before), "cached": len(before),
                                 "total": 2 * len(settings)}
    after = _cells(home)
    assert len(after) == 2 * len(settings) and all(after[k] == t for k, t in before.items())  # not rewritten
    ref = craftlab.sweep(models, digits, settings=settings, progress=False)
    pd.testing.assert_frame_equal(df, ref, check_exact=True)


def test_unreachable_address_is_a_clear_error_within_seconds(cluster, home, checkpoints, digits, capsys):
    from craftlab.cli import main

    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:1'"):
        craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], progress=False, engine="ray",
                       address="127.0.0.1:1")
    assert time.monotonic() - t0 < 10
    assert main(["sweep", "--checkpoint", checkpoints[0], "--methods", "magnitude", "--sparsities", "0.5",
                 "--patterns", "--bits", "8,8", "--engine", "ray", "--address", "127.0.0.1:1", "--quiet"]) == 2
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="HOST:PORT"):
        craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], engine="ray", address="headnode")
    with pytest.raises(ValueError, match="unknown sweep engine 'dask'"):
        craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], engine="dask")
    with pytest.raises(ValueError, match="engine='ray'"):
        craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], address="127.0.0.1:6379")


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):  # no request log on stderr
        pass


@pytest.fixture
def not_ray():
    """Loopback ports that are not Ray: a closed one, a plain HTTP server (as the dashboard's port) and a TCP
    server that accepts every connection and never answers (as a proxy)."""
    from http.server import ThreadingHTTPServer

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    yield {"closed": f"127.0.0.1:{closed_port}", "http": f"127.0.0.1:{http.server_address[1]}",
           "silent": f"127.0.0.1:{silent.getsockname()[1]}"}
    http.shutdown()
    http.server_close()
    silent.close()


def test_an_open_port_that_is_not_ray_fails_in_seconds_with_one_line(cluster, home, checkpoints, digits, not_ray,
                                                                      capsys):
    from craftlab.cli import main
    from craftlab.distributed.connect import ADDRESS_TIMEOUT_S, RayUnreachableError, check_address

    assert ADDRESS_TIMEOUT_S <= 10
    check_address(cluster)  # the real head passes
    for what, address in not_ray.items():
        t0 = time.monotonic()
        with pytest.raises(RayUnreachableError, match=f"cannot reach the Ray cluster at '{address}'"):
            craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], progress=False, engine="ray", address=address)
        assert time.monotonic() - t0 <= ADDRESS_TIMEOUT_S + 3, what
    # the CLI checks the address before it loads anything (this checkpoint does not even exist): one line, exit 2
    for address in (not_ray["http"], not_ray["silent"]):
        t0 = time.monotonic()
        assert main(["sweep", "--checkpoint", "no/such/checkpoint", "--engine", "ray", "--address", address,
                     "--quiet"]) == 2
        assert time.monotonic() - t0 <= ADDRESS_TIMEOUT_S + 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot reach the Ray cluster" in err and "Traceback" not in err, err


def test_the_address_is_checked_when_every_cell_is_cached(cluster, home, checkpoints, digits, not_ray):
    df = craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], progress=False, engine="ray")
    assert df.attrs["cells"]["computed"] == 1
    again = craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], progress=False, engine="ray", address=cluster)
    assert again.attrs["cells"] == {"computed": 0, "cached": 1, "total": 1}
    for address in (not_ray["closed"], not_ray["http"]):
        with pytest.raises(ConnectionError, match="cannot reach the Ray cluster"):
            craftlab.sweep(checkpoints[:1], digits, settings=["FP32"], progress=False, engine="ray", address=address)


def test_a_failing_cell_is_one_line_naming_it_or_listed_with_keep_going(cluster, home, checkpoints, resnet_ckpt,
                                                                         digits, capsys):
    from craftlab.cli import main
    from craftlab.distributed.cells import CellError

    models = {"vit": checkpoints[0], "resnet": resnet_ckpt}
    settings = ["FP32", "W8A8 repq"]
    with pytest.raises(CellError) as info:
        craftlab.sweep(models, digits, settings=settings, progress=False, engine="ray")
    msg = str(info.value)
    assert "model 'resnet'" in msg and "setting 'W8A8 repq" in msg and "ValueError: recipe 'repq'" in msg
    assert "\n" not in msg and "\x1b" not in msg
    # keep going: the other cells' table equals the in-process engine's, the failure is listed the same way
    df = craftlab.sweep(models, digits, settings=settings, progress=False, engine="ray", keep_going=True)
    ref = craftlab.sweep(models, digits, settings=settings, progress=False, keep_going=True)
    pd.testing.assert_frame_equal(df, ref, check_exact=True)
    assert list(zip(df["model"], df["setting"])) == [("vit", "FP32"), ("vit", "W8A8 repq"), ("resnet", "FP32")]
    assert df.attrs["failed"] == ref.attrs["failed"] and len(df.attrs["failed"]) == 1
    fail = df.attrs["failed"][0]
    assert (fail["model"], fail["setting"]) == ("resnet", "W8A8 repq")
    assert fail["error"].startswith("ValueError: recipe 'repq'") and "\n" not in fail["error"]
    # the CLI: one line and exit 2; with --keep-going the table, then the failures, and exit 1
    argv = ["sweep", "--checkpoint", checkpoints[0], resnet_ckpt, "--methods", "magnitude", "--sparsities", "0.5",
            "--patterns", "--bits", "8,8", "--recipe", "repq", "--engine", "ray", "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2  # without --keep-going: RepQ-ViT's up-front check of every model, one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and resnet_ckpt in err and "ViT" in err
    assert main([*argv, "--keep-going"]) == 1
    out = capsys.readouterr().out
    assert "1 cell(s) failed:" in out and "W8A8 repq" in out.split("failed:")[1]
    assert out.count(resnet_ckpt) == 3  # its FP32 and magnitude 50% rows, and its failure


def test_a_relative_checkpoint_path_is_resolved_on_the_driver(cluster, home, checkpoints, digits, monkeypatch):
    """Workers run in their own working directory (on a cluster: another machine's): the driver's relative
    path must reach them absolute."""
    ckpt = Path(checkpoints[0])
    monkeypatch.chdir(ckpt.parent.parent)
    rel = f"{ckpt.parent.name}/{ckpt.name}"
    worker_cwd = ray.get(ray.remote(lambda: os.getcwd()).remote())  # pickled by value
    assert Path(worker_cwd).resolve() != Path.cwd().resolve()  # what makes a relative path break
    df = craftlab.sweep([rel], digits, settings=["FP32", "W8A8"], progress=False, engine="ray")
    ref = craftlab.sweep({rel: craftlab.load_checkpoint(ckpt)}, digits, settings=["FP32", "W8A8"], progress=False)
    pd.testing.assert_frame_equal(df, ref, check_exact=True)
    assert list(df["model"]) == [rel, rel]  # labelled as the user wrote it


def test_cli_says_what_it_computes_and_what_was_cached(cluster, home, checkpoints, capsys):
    from craftlab.cli import main

    argv = ["sweep", "--checkpoint", checkpoints[1], "--methods", "magnitude", "--sparsities", "0.5", "--patterns",
            "--bits", "8,8", "--engine", "ray", "--cpus-per-task", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "sweep [ray]: 3 cells, 0 cached, 3 to compute on this session: starting workers..." in err
    assert "cells: 3 computed, 0 cached, 0 failed (of 3); computed on cpu: 3" in err  # a cluster without GPUs
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "sweep [ray]: 3 cells, 3 cached, 0 to compute" in err and "starting workers" not in err
    assert "cells: 0 computed, 3 cached, 0 failed (of 3)\n" in err
    argv[argv.index("0.5")] = "0.7"  # a cell to compute, asking for GPUs that this cluster does not have
    assert main([*argv, "--gpus-per-cell", "0.5"]) == 2  # refused, one line
    assert "gpus_per_cell=0.5, but the Ray cluster has no GPUs" in capsys.readouterr().err


def test_cache_folder_is_checked_on_every_node(cluster, home):
    from craftlab.distributed.ray_engine import check_shared_home, shared_home_error

    home.mkdir(parents=True)
    reports = check_shared_home(home)
    assert [r["node"] for r in reports] == [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert all(r["sees_marker"] and r["reply_seen"] for r in reports)
    assert not any((home / ".shared-check").iterdir())  # markers cleaned up
    # what a worker node with its own local folder reports, and the message the driver raises from it
    local = [*reports, {"node": "f00dfeed" * 7, "host": "worker-2", "sees_marker": False, "reply_seen": False}]
    msg = shared_home_error(str(home), local)
    assert f"CRAFTLAB_HOME={home} is not shared" in msg and "node f00dfeedf00d on worker-2" in msg
    assert str(reports[0]["node"])[:12] not in msg


def test_tune_optimises_accuracy_after_compression_at_the_named_setting(cluster, home):
    """The search's metric is the validation accuracy of the model compressed at `setting` after each epoch; a
    trial that ran to the end reports exactly what a plain fine-tune then compression measure here; ASHA's grace
    period defaults to half the schedule (no trial stopped before it)."""
    from craftlab.distributed.tune import tune_craft

    spec = RunSpec("resnet-tiny", "digits", epochs=4)
    table = tune_craft(spec, sam_rho=[0.0, 0.05], setting="W4A4")
    assert list(table["sam_rho"]) == [0.0, 0.05]
    assert table.attrs["grace_period"] == 2 and table["epochs"].min() >= 2
    best = table.attrs["best"]
    assert best["setting"] == "W4A4" and best["compressed_val_accuracy"] == table["compressed_val_accuracy"].max()
    assert "val_accuracy" not in best  # chosen after compression, not before
    # the independent reference: the same fine-tune here, then W4A4 on the validation split
    data = craftlab.load_data("digits", model=craftlab.build_model("resnet-tiny"))
    for _, row in table[table["epochs"] == spec.epochs].iterrows():
        model = craftlab.create_model("resnet-tiny", num_classes=10, progress=False)
        res = craftlab.finetune(model, data, epochs=spec.epochs, sam_rho=row["sam_rho"], progress=False)
        assert row["val_accuracy"] == res.history[-1]["val_accuracy"]
        assert row["compressed_val_accuracy"] == craftlab.compress_and_evaluate(
            res.model, data, split="val", setting="W4A4")["accuracy"]
    with pytest.raises(ValueError, match="sam_rho values"):
        tune_craft(spec, sam_rho=[-0.1])
    with pytest.raises(ValueError, match="grace_period"):
        tune_craft(spec, grace_period=0)
    with pytest.raises(ValueError):
        tune_craft(spec, setting="W1A1")
