"""Crash-safe file replacement: a reader sees the old file or the new one, never a mix.

Write to a temporary file in the same folder, fsync it, `os.replace` it over the
target (atomic on POSIX within one file system), then fsync the folder so the
rename itself survives a power cut.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale files are then left alone
    fcntl = None


def _final_mode(path: Path) -> int:
    """Keep the mode of the file being replaced; a new file gets 0o666 less the umask
    (mkstemp alone would leave 0o600)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock; a killed writer's lock is released by the kernel."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete temp files of `path` left by a writer that died (a kill in the write
    window): only our own pattern, `.NAME.*.tmp`, and only files no live writer locks."""
    removed = []
    if fcntl is None:
        return removed
    for candidate in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd):
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
        finally:
            os.close(fd)
    return removed


def _atomic_replace(path: Path, write) -> None:
    """Call `write(file)` on a temp file beside `path`, fsync, rename over `path`, fsync
    the folder. On any failure the temp file is removed and `path` is untouched. The
    temp file is locked while it is written, so the next write can tell a dead writer's
    leftovers (removed first) from a live writer's file."""
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        _try_lock(fd)
        os.fchmod(fd, _final_mode(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_replace(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to `dst` with the same all-or-nothing guarantee."""
    with open(src, "rb") as inp:
        _atomic_replace(Path(dst), lambda out: shutil.copyfileobj(inp, out))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles (Windows)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
