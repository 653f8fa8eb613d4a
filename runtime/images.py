"""Turning image files and arrays into the normalised tensors a bundle expects.

Any size and colour mode is accepted: images are converted to grayscale ("L")
for 1-channel bundles or RGB for 3-channel ones, resized to the bundle's HxW
with bilinear filtering, scaled to [0, 1] and normalised with its mean and std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .bundle import InputSpec
from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Decoding is refused above this many pixels (read from the header, before any pixel is
# decoded): a 300 KB PNG can declare 9000 x 9000 pixels, 324 MB once decoded.
MAX_PIXELS = 4096 * 4096


class ImageTooLarge(DataError):
    """An image declares more pixels than the limit allows."""


def decode_bounded(source, spec: InputSpec, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Open `source` (a path or a binary file), check its pixel count from the header,
    let JPEG decode at a reduced size (`draft`), then decode and resize it."""
    from PIL import Image

    with Image.open(source) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} pixels is over the limit of {max_pixels} "
                                "(--max-pixels)")
        image.draft("L" if spec.channels == 1 else "RGB", (spec.width, spec.height))
        image.load()
        return pil_to_pixels(image, spec)


def normalise(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] -> the model's input space."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels.float() - mean) / std


def pil_to_pixels(image, spec: InputSpec) -> torch.Tensor:
    """A PIL image -> (C, H, W) floats in [0, 1] matching the spec's channels and size."""
    from PIL import Image

    mode = "L" if spec.channels == 1 else "RGB"
    image = image.convert(mode).resize((spec.width, spec.height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    if array.shape[0] != spec.channels:
        array = np.repeat(array[:1], spec.channels, axis=0)
    return torch.from_numpy(np.ascontiguousarray(array))


def load_image(path: str | Path, spec: InputSpec, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Read one file; a corrupt, unreadable or too large file raises DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        return decode_bounded(path, spec, max_pixels)
    except ImageTooLarge as e:
        raise ImageTooLarge(f"{path}: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def to_model_input(images, spec: InputSpec) -> torch.Tensor:
    """PIL images, HxW / HxWxC uint8 arrays, or tensors -> a normalised (N, C, H, W) batch.

    Float tensors of shape (N, C, H, W) are taken as already normalised.
    """
    from PIL import Image

    if isinstance(images, torch.Tensor) and images.is_floating_point() and images.dim() == 4:
        return images.float()
    if isinstance(images, (Image.Image, np.ndarray)) or (
            isinstance(images, torch.Tensor) and images.dim() <= 3):
        images = [images]
    pixels = []
    for item in images:
        if isinstance(item, torch.Tensor):
            item = item.cpu().numpy()
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise DataError("numpy images must be uint8 HxW or HxWxC arrays")
            item = Image.fromarray(item)
        if not isinstance(item, Image.Image):
            raise DataError(f"cannot read an image from a {type(item).__name__}")
        pixels.append(pil_to_pixels(item, spec))
    if not pixels:
        raise DataError("no images given")
    return normalise(torch.stack(pixels), spec)


def is_image_name(path: Path) -> bool:
    """An image suffix and not hidden: macOS `._*` resource forks and dot-files are
    skipped, as torchvision's ImageFolder skips them."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in entries if is_image_name(p) and p.is_file())
