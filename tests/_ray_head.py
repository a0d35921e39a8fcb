"""A real Ray head for the tests that need one (``test_distributed_noraylet``, ``test_distributed_client``): written
once here. ``ray start --head --block`` in a private short temp folder (Ray's socket paths must stay short), no
dashboard, in its own process group; stopped at the end by signalling that group (the head and the processes it
started, nothing else), its folder removed.

Example (a module-scoped fixture)::

    @pytest.fixture(scope="module")
    def head():
        port = free_port()
        with ray_head(["--port", str(port)], ready=lambda: tcp_open(port)):
            yield f"127.0.0.1:{port}"
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 150


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_open(port: int) -> bool:
    """Does something accept TCP connections on 127.0.0.1:`port`?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of a Ray head or driver in the tests: one thread, no token authentication (Ray Client sends
    none), Ray's 30 s raylet start limit raised (it fails on a loaded machine), this checkout first on the path and
    no inherited ``RAY_ADDRESS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRAFTLAB_THREADS": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_raylet_start_wait_time_s": "120", **extra,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def ray_head(args: list[str], ready: Callable[[], bool], num_cpus: int = 1, prefix: str = "r23-",
             timeout_s: float = START_TIMEOUT_S) -> Iterator[Path]:
    """Start ``ray start --head --block`` with `args` and wait until ``ready()`` (polled every second); yields the
    head's temp folder. A head that exits or is not ready within `timeout_s` fails the test with its log, or skips
    it when the log says Ray's own start limit ran out (an overloaded machine)."""
    temp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    log = open(temp / "head.log", "w")
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", *args, "--num-cpus",
           str(num_cpus), "--include-dashboard", "false", "--temp-dir", str(temp)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (temp / "head.log").read_text()
                if "timed out during startup" in text:
                    pytest.skip("the Ray head did not start within Ray's 30 s limit (machine overloaded)")
                raise AssertionError(f"ray start --head failed:\n{text[-3000:]}")
            time.sleep(1)
        yield temp
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the head and the processes it started, nothing else
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
