"""Write held-out test images of a dataset as PNG files in ImageFolder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2kd.runtime.errors import DataError

from .datasets import Dataset


def write_samples(dataset: Dataset, out: Path, per_class: int, classes: list[str] | None = None,
                  flat: bool = False, split: str = "test") -> list[Path]:
    """`out/<class>/<i>.png` (or `out/<class>_<i>.png` with `flat`) from a split,
    un-normalised back to 8-bit pixels."""
    from PIL import Image

    names = classes or dataset.class_names
    unknown = sorted(set(names) - set(dataset.class_names))
    if unknown:
        raise DataError(f"unknown class(es) {', '.join(unknown)} for {dataset.name}")
    spec = dataset.input_spec
    mean = np.array(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.array(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    written = []
    for name in names:
        label = dataset.class_names.index(name)
        pool, labels = ((dataset.test_images, dataset.test_labels) if split == "test"
                        else (dataset.train_images, dataset.train_labels))
        images = pool[labels == label][:per_class].numpy()
        folder = out if flat else out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, x in enumerate(images):
            pixels = np.clip((x * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            array = pixels[0] if spec.channels == 1 else pixels.transpose(1, 2, 0)
            path = folder / (f"{name}_{i}.png" if flat else f"{i}.png")
            Image.fromarray(array).save(path)
            written.append(path)
    return written
