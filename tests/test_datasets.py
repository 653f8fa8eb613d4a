"""Dataset readers on small files the tests write in the real formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

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
    with pytest.raises(DataError, match="cifar100 not found"):
        load_dataset("cifar100", root=str(tmp_path))


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError, match="mnist5k"):
        load_dataset("imagenet")


def test_class_order_is_seeded():
    assert class_order(10, 1993) == class_order(10, 1993) != class_order(10, 1)
    assert class_order(5, None) == [0, 1, 2, 3, 4]
