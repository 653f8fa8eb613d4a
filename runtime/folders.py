"""Reading an ImageFolder tree (one sub-folder per class) with clear refusals."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .bundle import InputSpec
from .errors import DataError
from .images import ImageTooLarge, is_image_name, list_images, load_image


def class_folders(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    return folders


def _warn(message: str) -> None:
    warnings.warn(message, FolderWarning, stacklevel=3)


class FolderWarning(UserWarning):
    """Something in an image folder is ignored, or a class is too small to trust."""


def _nested_images(folder: Path) -> tuple[int, list[Path]]:
    """Images in sub-folders of a class folder (not read), and symlinks that loop back."""
    count, loops = 0, []
    for sub in (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.is_symlink() and sub.resolve() in (folder.resolve(), *folder.resolve().parents):
            loops.append(sub)
            continue
        for parent, dirs, files in os.walk(sub, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            count += sum(is_image_name(Path(parent) / f) for f in files)
    return count, loops


def warn_about_layout(folder: Path, n_images: int, warn: Callable[[str], None]) -> None:
    nested, loops = _nested_images(folder)
    if nested:
        warn(f"{folder}: {nested} image(s) in nested sub-folders are ignored "
             "(one folder level per class)")
    for link in loops:
        warn(f"{link}: symlink loop ignored")
    if n_images == 1:
        warn(f"{folder}: class has only 1 image; its statistics cannot describe it "
             "(use more images per class)")


def read_class_folders(root: str | Path, spec: InputSpec, skip_bad: bool = False,
                       warn: Callable[[str], None] = _warn
                       ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Returns class names, pixels in [0, 1] of shape (N, C, H, W) and labels 0..n-1.

    Refuses empty class folders and unreadable images (all of them are listed in
    the message) unless `skip_bad`, which drops unreadable files. Hidden files
    (`.*`, macOS `._*`) are skipped; nested sub-folders, symlink loops and one-image
    classes are reported through `warn`.
    """
    names, pixels, labels, bad = [], [], [], []
    for label, folder in enumerate(class_folders(root)):
        files = list_images(folder)
        warn_about_layout(folder, len(files), warn)
        if not files:
            raise DataError(f"{folder}: class folder has no images")
        names.append(folder.name)
        for path in files:
            try:
                pixels.append(load_image(path, spec))
                labels.append(label)
            except ImageTooLarge as e:
                bad.append(str(e))  # names the path and the pixel count
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
