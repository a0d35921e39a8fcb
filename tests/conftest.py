import contextlib
import os
import tempfile

import pytest
import torch

# Tests never touch the user's cache: a fresh CRAFTLAB_HOME per test session (zoo weights come from the
# copy shipped in the package, so nothing is pretrained or downloaded here).
os.environ.setdefault("CRAFTLAB_HOME", tempfile.mkdtemp(prefix="craftlab-test-home-"))
torch.set_num_threads(min(2, torch.get_num_threads()))


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
