"""What attaching repeated ``craftlab sweep --engine ray`` calls to one running Ray head saves (issue 23).

Run: ``python -m benchmarks.bench_ray_reuse`` (writes benchmarks/results/ray_reuse.json and ray_reuse.md).

A resnet-tiny checkpoint, 3 cells (FP32, magnitude 50%, W8A8 on the digits test split), each CLI call in a fresh
``CRAFTLAB_HOME`` so every cell is computed. Two ways, ``REPEATS`` calls each, alternating:

* **local**: ``craftlab sweep --engine ray`` with no address: every call starts a local Ray cluster (GCS, raylet,
  workers) and stops it at the end;
* **attached**: ``ray start --head`` once (timed), then ``craftlab sweep --engine ray --address 127.0.0.1:PORT``:
  every call joins the running head. Ray still starts the worker processes of each call (workers belong to one
  job), so what is saved is the cluster's start and stop.

Quick settings (3 cells, 3 calls each, one thread per process) on a shared 2-core machine: a measurement of the
start-up, not of throughput. ``RAY_raylet_start_wait_time_s=120`` (Ray's default is 30 s) keeps Ray from giving up
on a raylet that starts slowly on the loaded machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3


def _env(home: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRAFTLAB_THREADS": "1", "CRAFTLAB_HOME": home,
           "RAY_AUTH_MODE": "disabled", "RAY_raylet_start_wait_time_s": "120",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    return env


def _sweep(ckpt: str, address: str | None, tmp: Path) -> float:
    home = tempfile.mkdtemp(dir=tmp, prefix="home-")
    cmd = [sys.executable, "-m", "craftlab.cli", "sweep", "--checkpoint", ckpt, "--methods", "magnitude",
           "--sparsities", "0.5", "--patterns", "--bits", "8,8", "--engine", "ray", "--quiet",
           *(["--address", address] if address else [])]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(home), timeout=600)
    wall = time.perf_counter() - t0
    if done.returncode != 0 or "cells: 3 computed, 0 cached, 0 failed (of 3)" not in done.stderr:
        raise RuntimeError(f"sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall


def run() -> dict:
    from craftlab import create_model
    from craftlab.checkpoint import save_checkpoint
    from craftlab.distributed.connect import check_address

    tmp = Path(tempfile.mkdtemp(prefix="r23b-", dir="/tmp"))  # short: Ray's socket paths must stay short
    ckpt = str(save_checkpoint(create_model("resnet-tiny", num_classes=10, progress=False), tmp / "ckpt",
                               {"data": {"name": "digits"}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port",
                             str(port), "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir",
                             str(tmp / "ray")], stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,
                            env=_env(str(tmp / "home")), start_new_session=True)
    try:
        while True:
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                check_address(address, timeout=1)
                if "Ray runtime started" in (tmp / "head.log").read_text():  # GCS first, the raylet after
                    break
            if head.poll() is not None or time.perf_counter() - t0 > 300:
                raise RuntimeError("ray start --head did not come up")
            time.sleep(0.5)
        head_s = time.perf_counter() - t0
        local, attached = [], []
        for _ in range(REPEATS):
            local.append(_sweep(ckpt, None, tmp))
            if head.poll() is not None:
                raise RuntimeError("the head exited: " + (tmp / "head.log").read_text()[-3000:])
            attached.append(_sweep(ckpt, address, tmp))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"cells": 3, "repeats": REPEATS, "head_start_s": head_s, "local_s": local, "attached_s": attached,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def markdown(r: dict) -> str:
    ml, ma = statistics.median(r["local_s"]), statistics.median(r["attached_s"])
    return "\n".join([
        "### Repeated CLI sweeps: a local cluster per call vs attached to a running head", "",
        f"`python -m benchmarks.bench_ray_reuse`: {r['cells']} cells (resnet-tiny; FP32, magnitude 50%, W8A8), "
        f"each call in a fresh CRAFTLAB_HOME (all computed), {r['repeats']} calls each, alternating; load average "
        f"{r['load_before']:.1f} before, {r['load_after']:.1f} after (2 shared cores).", "",
        "| driver | wall per call: median (all) |", "|---|---|",
        f"| no --address (starts and stops a local cluster) | {ml:.1f} s "
        f"({', '.join(f'{v:.1f}' for v in r['local_s'])}) |",
        f"| --address 127.0.0.1:PORT (a head started once with `ray start --head`) | {ma:.1f} s "
        f"({', '.join(f'{v:.1f}' for v in r['attached_s'])}) |", "",
        f"Saved per call: {ml - ma:.1f} s (median); the head's one-off start took {r['head_start_s']:.1f} s. "
        "Worker processes still start in every call (Ray ties them to one job).", ""])


def main() -> None:
    r = run()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_reuse.json").write_text(json.dumps(r, indent=1))
    md = markdown(r)
    (RESULTS / "ray_reuse.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
