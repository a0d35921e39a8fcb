import contextlib
import os
import tempfile
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
    "test_distributed_ddp", "test_distributed_ray", "test_distributed_gpu", "test_distributed_noraylet",
    "test_data_lock",  # spawn processes, start Ray
    "test_pretrain", "test_supernet", "test_supernet_search",  # pretrain or train a supernet
})
NOTEBOOK_MODULES = frozenset({"test_notebooks"})


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
