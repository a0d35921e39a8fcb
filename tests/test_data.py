"""Data bundles: offline datasets, splits, calibration, tensors, image folders and clear errors."""

import numpy as np
import pytest
import torch

import craftlab


def test_digits_bundle_shapes_and_splits(digits):
    assert digits.num_classes == 10 and digits.classes == [str(i) for i in range(10)]
    sizes = digits.describe()["sizes"]
    assert sum(sizes[k] for k in ("train", "val", "test")) == 1797
    assert sizes["calib"] == 128
    x, y = next(iter(digits.train))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    # stratified: every class in every split
    for split in ("train", "val", "test"):
        ys = torch.cat([b[1] for b in digits.loader(split)])
        assert set(ys.tolist()) == set(range(10))


def test_splits_are_deterministic_and_disjoint():
    a, b = craftlab.load_data("digits", seed=3), craftlab.load_data("digits", seed=3)
    c = craftlab.load_data("digits", seed=4)
    xa = torch.cat([x for x, _ in a.test])
    assert torch.equal(xa, torch.cat([x for x, _ in b.test]))
    assert not torch.equal(xa, torch.cat([x for x, _ in c.test]))
    train = {t.numpy().tobytes() for x, _ in a.loader("train", shuffle=False) for t in x}
    test = {t.numpy().tobytes() for t in xa}
    assert not train & test


def test_training_order_is_seeded(digits):
    first = lambda seed: next(iter(digits.loader("train", seed=seed)))[1]
    assert torch.equal(first(1), first(1)) and not torch.equal(first(1), first(2))


def test_image_size_channels_and_model_config():
    d = craftlab.load_data("digits", image_size=16, channels=3)
    assert next(iter(d.test))[0].shape[1:] == (3, 16, 16)
    vit = craftlab.create_model("vit-tiny", pretrained=False)
    d = craftlab.load_data("digits", model=vit)
    assert d.input_size == (1, 28, 28)


def test_mnist5k_offline():
    d = craftlab.load_data("mnist5k", calib_size=32)
    assert sum(d.describe()["sizes"][k] for k in ("train", "val", "test")) == 5000
    assert len(d.calib_set) == 32


def test_from_tensors():
    x, y = torch.randn(50, 3, 8, 8), torch.arange(50) % 5
    d = craftlab.from_tensors(x, y, classes=list("abcde"), calib_size=10)
    assert d.num_classes == 5 and len(d.calib_set) == 10
    assert len(d.train_set) + len(d.val_set) + len(d.test_set) == 50
    with pytest.raises(ValueError, match="shape"):
        craftlab.from_tensors(torch.randn(5, 8), torch.zeros(5))


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        craftlab.load_data("cifar-10")


def test_missing_torchvision_dataset_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="could not load dataset 'cifar10'.*network"):
        craftlab.load_data("cifar10", root=str(tmp_path), download=False)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = craftlab.load_data(f"imagefolder:{tmp_path}", image_size=32, calib_size=4)
    assert d.classes == ["cat", "dog"] and d.num_classes == 2
    x, y = next(iter(d.test))
    assert x.shape[1:] == (3, 32, 32)
    assert len(d.train_set) + len(d.val_set) + len(d.test_set) == 20
    with pytest.raises(ValueError, match="not a directory"):
        craftlab.load_data(f"imagefolder:{tmp_path / 'nope'}")
