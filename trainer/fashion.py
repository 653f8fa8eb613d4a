"""Fashion-MNIST from Debian's `dataset-fashion-mnist`, read by torchvision's own reader.

The package ships the four official files gzipped under
/usr/share/datasets/fashion-mnist. torchvision's `FashionMNIST` wants them
decompressed under `ROOT/FashionMNIST/raw/` and will not take the .gz files as they
are, so they are decompressed once into a cache folder (`$M2KD_CACHE`, default
~/.cache/m2kd), each through a temporary file renamed into place, so an interrupted
run never leaves a truncated file that a later run would trust. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from m2kd.runtime.atomic import atomic_write_bytes
from m2kd.runtime.errors import DataError

PACKAGE_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def cache_root() -> Path:
    return Path(os.environ.get("M2KD_CACHE", Path.home() / ".cache" / "m2kd")) / "fashion-mnist"


def _source_file(source: Path, name: str) -> Path:
    for candidate in (source / f"{name}.gz", source / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {name}(.gz) not found under {source}; install "
                    "Debian's package dataset-fashion-mnist (apt-get install "
                    "dataset-fashion-mnist) or pass --root with the four official files")


def prepare_raw(source: Path, cache: Path) -> Path:
    """Decompress the four files into `cache/FashionMNIST/raw/` once; returns `cache`."""
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = raw / name
        if target.is_file():
            continue
        src = _source_file(source, name)
        opener = gzip.open if src.suffix == ".gz" else open
        try:
            with opener(src, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as e:
            raise DataError(f"{src}: unreadable ({e})") from None
        atomic_write_bytes(target, data)
    return cache


def read_fashion_mnist(root: str | Path | None = None):
    """((train pixels uint8 (N, 28, 28), labels), (test ...), class names)."""
    from torchvision.datasets import FashionMNIST

    source = Path(root) if root else PACKAGE_DIR
    if not source.is_dir():
        raise DataError(f"{source}: no such folder; install Debian's package "
                        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
                        "pass --root")
    cache = prepare_raw(source, cache_root() / _cache_key(source))
    try:
        train = FashionMNIST(str(cache), train=True, download=False)
        test = FashionMNIST(str(cache), train=False, download=False)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise DataError(f"Fashion-MNIST files under {source} are not in the official "
                        f"format ({e})") from None
    return ((train.data.numpy(), train.targets.numpy().astype(np.int64)),
            (test.data.numpy(), test.targets.numpy().astype(np.int64)),
            [c.replace("/", "-") for c in train.classes])  # "T-shirt/top" names a folder


def _cache_key(source: Path) -> str:
    """One cache folder per source folder, so two roots never share decompressed files."""
    import hashlib

    return hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
