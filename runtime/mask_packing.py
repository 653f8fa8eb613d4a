"""Owner masks on disk: 4 bits per weight while a bundle has at most 15 steps.

In memory a mask is a uint8 tensor shaped like its weight. On disk (bundle v2,
metadata `mask_bits`) it is either that tensor (`"8"`) or the flattened owners packed
two per byte, the first weight in the low nibble (`"4"`, chosen whenever every owner
fits: 0..15). Masks are half the size, which is most of what a bundle adds over one
plain model (docs/bundle-format.md).
"""

from __future__ import annotations

import math

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
