"""Dataset readers on small files the tests write in the real formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from m2kd.runtime.errors import ConfigError, DataError
from m2kd.trainer.datasets import class_order, load_dataset, load_folder
from m2kd.trainer.samples import write_samples


def test_folder_with_train_and_test_splits(digits, tmp_path):
    write_samples(digits, tmp_path / "train", 6, ["1", "2", "3"], split="train")
    write_samples(digits, tmp_path / "test", 2, ["1", "2", "3"], split="test")
    ds = load_folder(tmp_path, image_size=8, channels=1)
    assert ds.class_names == ["1", "2", "3"]
    assert ds.train_images.shape == (18, 1, 8, 8) and ds.test_images.shape == (6, 1, 8, 8)
    assert ds.input_spec.channels == 1


def test_folder_without_splits_is_split_80_20(digits, tmp_path):
    write_samples(digits, tmp_path, 10, ["4", "5"], split="train")
    ds = load_folder(tmp_path, image_size=16, channels=3)
    assert len(ds.train_labels) == 16 and len(ds.test_labels) == 4
    assert ds.train_images.shape[1:] == (3, 16, 16)


def test_cifar10_reader_on_files_in_torchvision_format(tmp_path, monkeypatch):
    from torchvision import datasets

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)

    def batch(n):
        return {"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8),
                "labels": list(rng.randint(0, 10, n))}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(4), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # The files are ours, so torchvision's md5 checks of the official archive cannot pass.
    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *a, **k: True)
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.class_names[0] == "c0" and ds.default_augment == "flip"


def test_missing_cifar_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cifar-100-python/train is missing") as e:
        load_dataset("cifar100", root=str(tmp_path))
    assert "download" not in str(e.value) and "cifar-100-python.tar.gz" in str(e.value)


def test_a_cifar_file_that_is_not_the_official_one_names_the_expected_md5(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"crafted")
    with pytest.raises(DataError, match="data_batch_1 is not the official file "
                                        "\\(md5 expected c99cafc152244af753f735de768cd75f\\)"):
        load_dataset("cifar10", root=str(tmp_path))


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError, match="mnist5k"):
        load_dataset("imagenet")


def test_class_order_is_seeded():
    assert class_order(10, 1993) == class_order(10, 1993) != class_order(10, 1)
    assert class_order(5, None) == [0, 1, 2, 3, 4]


def _write_idx(path, array: np.ndarray) -> None:
    """The official MNIST/Fashion-MNIST idx format (uint8), gzipped like Debian's files."""
    import gzip
    import struct

    magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def fashion_root(tmp_path, monkeypatch):
    monkeypatch.setenv("M2KD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "fashion"
    root.mkdir()
    rng = np.random.RandomState(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.randint(0, 256, (n, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_fashion_mnist_reads_the_official_gz_files_through_torchvision(fashion_root):
    data = load_dataset("fashion-mnist", str(fashion_root), train_per_class=3)
    assert data.class_names[0] == "T-shirt-top" and data.num_classes == 10
    assert data.train_images.shape == (30, 1, 28, 28) and len(data.test_labels) == 20
    # the subsample is deterministic and the decompressed cache is reused
    again = load_dataset("fashion-mnist", str(fashion_root), train_per_class=3)
    assert torch.equal(again.train_images, data.train_images)
    # shifts in the base step, none on the device (docs/methods.md, session 19)
    assert data.step_settings(15) == {"augment": "none", "base_augment": "shift",
                                      "base_epochs": 30}


def test_fashion_mnist_missing_files_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("M2KD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))


def test_fashion_mnist_damaged_file_is_a_clear_error(fashion_root):
    (fashion_root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="unreadable"):
        load_dataset("fashion-mnist", str(fashion_root))


def test_a_dataset_names_the_base_steps_recipe_where_it_differs(digits):
    """Fashion-MNIST shifts in its base step only, for twice the epochs; "auto" and None
    read the dataset's, an explicit choice wins, and a base step like every other step is
    stored as None (so such a run compares equal to one written before the fields)."""
    from dataclasses import replace

    fashion_like = replace(digits, default_augment="none", default_base_augment="shift",
                           base_epochs_factor=2)
    assert fashion_like.step_settings(15) == {"augment": "none", "base_augment": "shift",
                                              "base_epochs": 30}
    assert fashion_like.step_settings(2, "flip", base_epochs=5) == {
        "augment": "flip", "base_augment": "shift", "base_epochs": 5}
    assert fashion_like.step_settings(15, "shift", "auto", 15) == {
        "augment": "shift", "base_augment": None, "base_epochs": None}
    assert fashion_like.step_settings(15, "auto", "none")["base_augment"] is None
    assert digits.step_settings(15) == {"augment": "none", "base_augment": None,
                                        "base_epochs": None}
    assert digits.step_settings(15, "flip", "shift", 20) == {
        "augment": "flip", "base_augment": "shift", "base_epochs": 20}
