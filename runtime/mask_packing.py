"""Owner masks on disk: 4 bits per weight while a bundle has at most 15 steps, sorted
by weight magnitude and deflate-coded.

In memory a mask is a uint8 tensor shaped like its weight. On disk (bundle v2,
metadata `mask_bits`) it is either that tensor (`"8"`) or the flattened owners packed
two per byte, the first weight in the low nibble (`"4"`, chosen whenever every owner
fits: 0..15). With metadata `mask_coding: "deflate"` that byte string is stored
deflate-compressed (zlib, RFC 1950): owners are far from uniform (each step keeps a
fixed share of the weights still free, so the counts fall geometrically), and deflate
comes within 3 % of their entropy (3.1 bits per weight for ResNet-32 after 11 steps).

`"sorted-deflate"` (what m2kd writes) lists the owners in order of increasing |weight|
first (a stable sort: ties keep their position). The owner of a weight is far from
independent of its magnitude: free weights are exactly 0, and the weights a step keeps
are the largest among those it trained, so sorted owners come in long runs that
deflate codes in 62 % of the bytes of the unsorted ones (ResNet-32, 11 steps). The
reader has the weights before the masks, so it can sort the same way and scatter the
owners back (docs/bundle-format.md).
"""

from __future__ import annotations

import math
import zlib

import torch

from .errors import BundleFormatError

NIBBLE_MAX = 15


def mask_bits_for(num_steps: int) -> int:
    return 4 if num_steps <= NIBBLE_MAX else 8


def pack_nibbles(mask: torch.Tensor) -> torch.Tensor:
    """(any shape) uint8 owners 0..15 -> (ceil(n / 2),) uint8."""
    flat = mask.reshape(-1)
    if len(flat) % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """Inverse of `pack_nibbles` for a weight of `shape`; a wrong length is a format error."""
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or len(packed) != (n + 1) // 2:
        raise BundleFormatError(f"{name}: a 4-bit mask of {n} weights must be uint8 of shape "
                                f"({(n + 1) // 2},), got {packed.dtype} {tuple(packed.shape)}")
    owners = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:n]
    return owners.reshape(shape).contiguous()


MASK_CODINGS = ("raw", "deflate", "sorted-deflate")


def magnitude_order(weight: torch.Tensor) -> torch.Tensor:
    """Positions of the flattened weight by increasing |w|, ties in position order."""
    return torch.sort(weight.reshape(-1).abs(), stable=True).indices


def encode_mask(mask: torch.Tensor, weight: torch.Tensor, bits: int, coding: str
                ) -> torch.Tensor:
    """A uint8 owner mask in its on-disk form (`bits` 4 or 8, one of MASK_CODINGS)."""
    if bits == 8 and coding == "raw":
        return mask  # as every file before packing stored it: shaped like the weight
    owners = mask.reshape(-1)
    if coding == "sorted-deflate":
        owners = owners[magnitude_order(weight)]
    packed = pack_nibbles(owners) if bits == 4 else owners
    return packed if coding == "raw" else deflate(packed)


def decode_mask(stored: torch.Tensor, weight: torch.Tensor, bits: int, coding: str,
                name: str) -> torch.Tensor:
    """Inverse of `encode_mask`, shaped like `weight`; any mismatch is a format error."""
    n = weight.numel()
    if coding != "raw":
        stored = inflate(stored, (n + 1) // 2 if bits == 4 else n, name)
    if bits == 4:
        owners = unpack_nibbles(stored, torch.Size([n]), name)
    elif coding == "raw":
        return stored  # one byte per owner, already shaped (checked by the validator)
    else:
        owners = stored
    if coding == "sorted-deflate":
        if not torch.isfinite(weight).all():
            raise BundleFormatError(f"{name}: its weight has non-finite values")
        unsorted = torch.empty_like(owners)
        unsorted[magnitude_order(weight)] = owners
        owners = unsorted
    return owners.reshape(weight.shape)


def deflate(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bytes -> their zlib stream (level 9) as a 1-D uint8 tensor."""
    data = zlib.compress(packed.numpy().tobytes(), 9)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def inflate(stored: torch.Tensor, length: int, name: str) -> torch.Tensor:
    """Inverse of `deflate` for a stream that must hold exactly `length` bytes. Never
    inflates more than that, so a crafted stream cannot exhaust memory."""
    if stored.dtype != torch.uint8 or stored.dim() != 1:
        raise BundleFormatError(f"{name}: a deflated mask must be 1-D uint8, got "
                                f"{stored.dtype} {tuple(stored.shape)}")
    stream = zlib.decompressobj()
    try:
        data = stream.decompress(stored.numpy().tobytes(), length + 1)  # +1: sees excess
    except zlib.error:
        raise BundleFormatError(f"{name}: the deflated mask is corrupt") from None
    if len(data) != length or not stream.eof or stream.unconsumed_tail or stream.unused_data:
        raise BundleFormatError(f"{name}: the deflated mask does not hold exactly "
                                f"{length} bytes")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
