"""Probe inputs derived from a seed, identically on every machine and library version.

A probe is a small input batch and the logits a step's model gave on it (guarantee 2).
Storing the input costs 4 * 2 * C * H * W bytes per step; deriving it from a seed costs
nothing, but only if the derivation can never change: `torch.randn` is not promised to
give the same numbers across versions, so the values come from SHA-256 in counter mode,
read as uint32 and mapped to [-2, 2) (the range of normalised pixels).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

PROBE_SEED = 0
_VALUES_PER_BLOCK = 8  # 32 bytes of SHA-256 = 8 uint32


def seeded_values(seed: int, count: int) -> np.ndarray:
    """`count` float32 values in [-2, 2) from SHA-256(f"m2kd-probe:{seed}:{block}")."""
    blocks = -(-count // _VALUES_PER_BLOCK)
    raw = b"".join(hashlib.sha256(f"m2kd-probe:{seed}:{i}".encode()).digest()
                   for i in range(blocks))
    words = np.frombuffer(raw, dtype="<u4")[:count].astype(np.float64)
    return (words / 2**32 * 4.0 - 2.0).astype(np.float32)


def seeded_probe_input(batch: int, channels: int, height: int, width: int,
                       seed: int = PROBE_SEED) -> torch.Tensor:
    values = seeded_values(seed, batch * channels * height * width)
    return torch.from_numpy(values).reshape(batch, channels, height, width)
