"""Reading an ImageFolder tree (one sub-folder per class) with clear refusals."""

from __future__ import annotations

from pathlib import Path

import torch

from .bundle import InputSpec
from .errors import DataError
from .images import list_images, load_image


def class_folders(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    return folders


def read_class_folders(root: str | Path, spec: InputSpec, skip_bad: bool = False
                       ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Returns class names, pixels in [0, 1] of shape (N, C, H, W) and labels 0..n-1.

    Refuses empty class folders and unreadable images (all of them are listed in
    the message) unless `skip_bad`, which drops unreadable files.
    """
    names, pixels, labels, bad = [], [], [], []
    for label, folder in enumerate(class_folders(root)):
        files = list_images(folder)
        if not files:
            raise DataError(f"{folder}: class folder has no images")
        names.append(folder.name)
        for path in files:
            try:
                pixels.append(load_image(path, spec))
                labels.append(label)
            except DataError:
                bad.append(str(path))
    if bad and not skip_bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} unreadable image(s): {shown} (use --skip-bad to skip them)")
    present = set(labels)
    empty = [n for i, n in enumerate(names) if i not in present]
    if empty:
        raise DataError(f"no readable images for class(es): {', '.join(empty)}")
    return names, torch.stack(pixels), torch.tensor(labels, dtype=torch.long)
