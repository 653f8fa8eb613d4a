"""Class statistics: count, mean and covariance of a class's pooled features.

They are computed once, from the class's own images, in the step that learns it,
in the feature space of an exact snapshot (a model the bundle rebuilds bit for bit),
so they never go stale: no image is kept, and no later step changes them.

Which features: the pooled output of the last stage (`last`, the head's input; every
bundle written before session 17) or of every stage, concatenated from the first to the
last (`stages`, the default since session 17: the earlier stages describe more than
what separated the base classes; docs/methods.md, "Statistics of every stage"). A
bundle fixes the kind in its base step (`Bundle.stats_features`).

Features are Tukey-transformed first (`phi(f) = f ** beta`, FeCAM Sec. 3.3; pooled
ReLU features are non-negative), which makes class distributions closer to Gaussian.
Covariances are stored as their packed upper triangle (D (D + 1) / 2 values).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .devices import fast_memory_format, inference_batch_size
from .inference import run_in_batches

TUKEY_BETA = 0.5
STATS_FEATURES = ("stages", "last")  # the first is the default of new bundles


def statistics_features(output, kind: str) -> torch.Tensor:
    """The features class statistics describe, from a BackboneOutput: the pooled last
    stage (`last`) or every stage's pooled output concatenated, the last stage last
    (`stages`), so `last_stage` finds the head's input in either."""
    if kind == "last":
        return output.features
    return of_pooled_stages([stage.mean(dim=(2, 3)) for stage in output.stages], kind)


def of_pooled_stages(pooled: list[torch.Tensor], kind: str) -> torch.Tensor:
    """`statistics_features` from each stage's pooled output, first to last."""
    return pooled[-1] if kind == "last" else torch.cat(pooled, dim=1)


def statistics_dim(widths: tuple[int, ...], kind: str) -> int:
    """Dimension of the statistics' features for a backbone of stage widths `widths`."""
    return widths[-1] if kind == "last" else sum(widths)


def last_stage(features: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """The pooled last stage (the head's input) of statistics features of either kind."""
    return features[..., -feature_dim:]


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

    def last_dims(self, d: int) -> ClassStats:
        """The statistics of the last `d` features only (mean and covariance sub-block):
        the last stage's of `stages` statistics."""
        if d == self.dim:
            return self
        cov = self.covariances()[:, -d:, -d:]
        return ClassStats(self.count, self.mean[:, -d:].contiguous(), pack(cov).contiguous())

    @staticmethod
    def concat(parts: list[ClassStats]) -> ClassStats:
        return ClassStats(torch.cat([p.count for p in parts]), torch.cat([p.mean for p in parts]),
                          torch.cat([p.cov for p in parts]))


@dataclass
class Moments:
    """Per class: count, sum and sum of outer products of tukey(features), float64.
    Moments of disjoint parts of a class's images add up (runtime/distributed.py sums
    them across ranks); `statistics` turns them into ClassStats."""

    count: torch.Tensor  # (n,) float64
    total: torch.Tensor  # (n, D)
    outer: torch.Tensor  # (n, D, D)

    def tensors(self) -> list[torch.Tensor]:
        return [self.count, self.total, self.outer]

    def statistics(self) -> ClassStats:
        n = self.count.clamp(min=1)[:, None]
        mean = self.total / n
        centred = self.outer - n[..., None] * mean[:, :, None] * mean[:, None, :]
        cov = centred / (n[..., None] - 1).clamp(min=1)
        return ClassStats(self.count.round().to(torch.int64), mean.float(), pack(cov).float())


def with_covariance_prior(stats: ClassStats, prior: torch.Tensor, strength: float) -> ClassStats:
    """Each class's covariance drawn towards `prior` (D, D) as if `strength` extra
    observations had that covariance: ((n - 1) S + k P) / (n - 1 + k), the posterior mean
    of a conjugate (inverse-Wishart) prior. A class learned from 5 images gets mostly the
    prior's shape; one of 400 keeps its own (k = 16: 4 % of the prior)."""
    if strength <= 0:
        return stats
    seen = (stats.count.double() - 1).clamp(min=0)[:, None, None]
    cov = (seen * stats.covariances().double() + strength * prior.double()) / (seen + strength)
    return ClassStats(stats.count, stats.mean, pack(cov).float())


def moments_of(features: torch.Tensor, labels: torch.Tensor, classes: list[int],
               beta: float = TUKEY_BETA) -> Moments:
    z = tukey(features.double(), beta)
    parts = [z[labels == c] for c in classes]
    return Moments(torch.tensor([float(len(x)) for x in parts], dtype=torch.float64),
                   torch.stack([x.sum(0) for x in parts]),
                   torch.stack([x.T @ x for x in parts]))


def statistics_of(features: torch.Tensor, labels: torch.Tensor, classes: list[int],
                  beta: float = TUKEY_BETA) -> ClassStats:
    """Per class in `classes` (in that order): count, mean and unbiased covariance of
    tukey(features), accumulated in float64."""
    return moments_of(features, labels, classes, beta).statistics()


@torch.no_grad()
def pooled_features(model: nn.Module, images: torch.Tensor, device, kind: str = "last"
                    ) -> torch.Tensor:
    """The pooled features (`statistics_features` of `kind`) of `model` (eval mode) for
    `images`, on the CPU, run in the device's fastest layout (on a copy there, so `model`
    keeps its own)."""
    device = torch.device(device)
    layout = fast_memory_format(device)
    model = model.eval() if layout == torch.contiguous_format else \
        copy.deepcopy(model).eval().to(memory_format=layout)
    return run_in_batches(
        lambda x: statistics_features(model(x.contiguous(memory_format=layout)), kind).float(),
        images, device, inference_batch_size(device))
