import contextlib
import functools
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch

# Tests never touch the user's cache: a fresh CRAFTLAB_HOME per test session (zoo weights come from the
# copy shipped in the package, so nothing is pretrained or downloaded here).
os.environ.setdefault("CRAFTLAB_HOME", tempfile.mkdtemp(prefix="craftlab-test-home-"))
torch.set_num_threads(min(2, torch.get_num_threads()))

# Markers by module, so `pytest -m "not slow and not browser and not notebooks"` is the fast unit subset
# (registered in pyproject.toml; `make test` still runs everything). A new module that trains models, starts
# servers or spawns processes belongs in SLOW_MODULES.
SLOW_MODULES = frozenset({
    "test_app", "test_app_adapt", "test_app_service", "test_app_supernet", "test_adapt_methods",  # train / serve
    "test_consistency",
    "test_distributed_ddp", "test_distributed_ray", "test_distributed_noraylet", "test_data_lock",  # spawn, Ray
    "test_distributed_client", "test_distributed_gpu",  # start a Ray cluster (a minute of setup on a busy machine)
    "test_pretrain", "test_supernet", "test_supernet_search",  # pretrain or train a supernet
})
NOTEBOOK_MODULES = frozenset({"test_notebooks"})


# ------------------------------------------------------------------------ timeouts that scale with the machine

CALIBRATION_CPU_S = 0.045
"""CPU seconds of :func:`_calibration_work` on the 2-core development machine (1 thread): its wall time there
when the machine is quiet. The waits of the browser and timing-sensitive tests were written for that machine."""


def _calibration_work() -> None:
    a = torch.randn(192, 192, generator=torch.Generator().manual_seed(0))
    for _ in range(160):  # tensor work on one thread, then interpreter work: both slow down under load
        a = torch.tanh(a @ a * 0.01)
    s = 0
    for i in range(240_000):
        s += i * i


@functools.lru_cache(maxsize=1)
def slowness() -> float:
    """How many times slower this machine is now than the quiet development machine the tests' waits were written
    for, at least 1 and at most 10: ``CRAFTLAB_TEST_SLOW`` when set, else the larger of the wall time of a
    ~0.05 s calibration (one thread, median of 3) over its quiet time and the 1-minute load average per core.
    Measured once per session (the browser modules read it when they are imported)."""
    env = os.environ.get("CRAFTLAB_TEST_SLOW")
    if env:
        return max(1.0, float(env))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            _calibration_work()
            walls.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0.0
    return float(min(10.0, max(1.0, sorted(walls)[1] / CALIBRATION_CPU_S, load)))


def scaled(value: float) -> float:
    """`value` (a timeout or a time limit, any unit) times :func:`slowness`: ``scaled(5)`` is 5 on a quiet
    development machine, up to 50 on a loaded one."""
    return value * slowness()


def scaled_ms(ms: float) -> int:
    """A Playwright timeout in milliseconds, scaled by :func:`slowness`."""
    return int(scaled(ms))


def pytest_report_header(config):
    return f"timeouts of browser and timing tests scaled by {slowness():.1f} (tests/conftest.py slowness)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = Path(str(item.fspath)).stem
        if module.startswith("test_app"):
            item.add_marker(pytest.mark.app)
        if module == "test_app_browser" or "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
        if module in NOTEBOOK_MODULES:
            item.add_marker(pytest.mark.notebooks)
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits():
    import craftlab

    return craftlab.load_data("digits")


@pytest.fixture(scope="module")
def vit():
    """The zoo's vit-tiny (mnist5k-pretrained) with a fresh 10-class head."""
    import craftlab

    return craftlab.create_model("vit-tiny", num_classes=10, progress=False)


@pytest.fixture(scope="module")
def small(digits):
    """A 300-image slice of digits (180/60/60): keeps every training run well under a second."""
    import craftlab

    x, y = digits.train_set.tensors
    return craftlab.from_tensors(x[:300], y[:300], name="digits300", batch_size=32)


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


@pytest.fixture
def unchanged():
    """``with unchanged(model): ...`` fails if the block changed the model's weights, buffers, flags or mode."""

    @contextlib.contextmanager
    def check(model):
        before = _snapshot(model)
        yield model
        after = _snapshot(model)
        assert before[0].keys() == after[0].keys()
        for k in before[0]:
            assert torch.equal(before[0][k], after[0][k]), f"{k} changed"
        assert before[1] == after[1], "requires_grad flags changed"
        assert before[2] == after[2], "train/eval mode changed"

    return check


# ------------------------------------------------------------------------ the app's fixtures (tests/test_app*.py)

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server started by a test)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMALL_EXPLORER = dict(epochs=1, sparsity_grid=(0.25, 0.5, 0.75), bits_grid=(8, 4), landscape_steps=5, path_steps=9,
                      coarse_steps=None, probe_size=64)
"""The app tests' Explorer: 1-epoch arms, short curve grids, 5 x 5 landscapes in one level, 64 probe images."""


@pytest.fixture(scope="session")
def small_explorer():
    """``small_explorer(**kw)`` makes an Explorer with :data:`SMALL_EXPLORER`'s options (`kw` replace them)."""
    from craftlab_app.explore.service import Explorer

    def make(**kw):
        return Explorer(**{**SMALL_EXPLORER, **kw})

    return make


@pytest.fixture(scope="module")
def tab_services():
    """The paper tabs' services :func:`served` launches with; a module overrides it (``{"adapt_service": view}``)."""
    return {}


@pytest.fixture(scope="module")
def served(small_explorer, tab_services):
    """The whole app served in this process (no warm-up) around a one-seed Explorer, with the module's
    :func:`tab_services` (the Supernet, Adapt and Compose tabs' browser tests)."""
    from craftlab_app.ui import launch

    ex = small_explorer(seeds=(0,), sparsity_grid=(0.5,), bits_grid=(4,))
    demo = launch(port=free_port(), prevent_thread_lock=True, explorer=ex, models=["vit-tiny"], threads=1,
                  warm=False, **tab_services)
    try:
        yield demo
    finally:
        demo.close()
        ex.close()
