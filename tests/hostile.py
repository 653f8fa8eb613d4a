"""Hostile inputs the tests send: small files that declare huge images, and bundles
with edited metadata or tensors."""

from __future__ import annotations

import struct
import zlib

from safetensors import safe_open
from safetensors.torch import save_file


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid RGB PNG of width x height black pixels: a few hundred KB on disk,
    3 * width * height bytes once decoded. Built row by row, never held decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\0" * (1 + 3 * width)  # filter byte + pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def rewrite_bundle(src, dst, edit_tensors=None, **metadata):
    """A copy of bundle `src` at `dst` with some metadata values (and, through
    `edit_tensors(dict)`, tensors) replaced; the checksum is left as it was."""
    with safe_open(src, "pt") as f:
        meta = {**f.metadata(), **metadata}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, dst, metadata=meta)
    return dst
