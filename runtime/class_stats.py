"""Class statistics: count, mean and covariance of a class's pooled features.

They are computed once, from the class's own images, in the step that learns it,
in the feature space of an exact snapshot (a model the bundle rebuilds bit for bit),
so they never go stale: no image is kept, and no later step changes them.

Features are Tukey-transformed first (`phi(f) = f ** beta`, FeCAM Sec. 3.3; pooled
ReLU features are non-negative), which makes class distributions closer to Gaussian.
Covariances are stored as their packed upper triangle (D (D + 1) / 2 values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .inference import run_in_batches

TUKEY_BETA = 0.5


def tukey(features: torch.Tensor, beta: float = TUKEY_BETA) -> torch.Tensor:
    """FeCAM's Tukey ladder transform; beta = 1 keeps the features as they are."""
    return features.clamp(min=0).pow(beta) if beta != 1 else features


def packed_size(dim: int) -> int:
    return dim * (dim + 1) // 2


def pack(cov: torch.Tensor) -> torch.Tensor:
    """(..., D, D) symmetric -> (..., D (D + 1) / 2), upper triangle row by row."""
    d = cov.shape[-1]
    rows, cols = torch.triu_indices(d, d)
    return cov[..., rows, cols]


def unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of `pack`."""
    rows, cols = torch.triu_indices(dim, dim)
    cov = packed.new_zeros(*packed.shape[:-1], dim, dim)
    cov[..., rows, cols] = packed
    cov[..., cols, rows] = packed
    return cov


@dataclass
class ClassStats:
    """Statistics of n classes in one feature space of dimension D."""

    count: torch.Tensor  # (n,) int64
    mean: torch.Tensor  # (n, D) float32, of tukey(features)
    cov: torch.Tensor  # (n, D (D + 1) / 2) float32, unbiased, packed

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    def __len__(self) -> int:
        return len(self.count)

    def covariances(self) -> torch.Tensor:
        return unpack(self.cov, self.dim)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.count, self.mean, self.cov))

    @staticmethod
    def concat(parts: list[ClassStats]) -> ClassStats:
        return ClassStats(torch.cat([p.count for p in parts]), torch.cat([p.mean for p in parts]),
                          torch.cat([p.cov for p in parts]))


def statistics_of(features: torch.Tensor, labels: torch.Tensor, classes: list[int],
                  beta: float = TUKEY_BETA) -> ClassStats:
    """Per class in `classes` (in that order): count, mean and unbiased covariance of
    tukey(features), accumulated in float64."""
    z = tukey(features.double(), beta)
    counts, means, covs = [], [], []
    for c in classes:
        x = z[labels == c]
        n = len(x)
        mean = x.mean(0) if n else z.new_zeros(z.shape[1])
        centred = x - mean
        cov = centred.T @ centred / max(n - 1, 1)
        counts.append(n)
        means.append(mean)
        covs.append(cov)
    return ClassStats(torch.tensor(counts, dtype=torch.int64), torch.stack(means).float(),
                      pack(torch.stack(covs)).float())


@torch.no_grad()
def pooled_features(model: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    """The pooled last-stage features of `model` (eval mode) for `images`, on the CPU."""
    model.eval()
    return run_in_batches(lambda x: model(x).features.float(), images, device)
