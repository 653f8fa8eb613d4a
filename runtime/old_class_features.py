"""Old classes as Gaussian pseudo-features in the space of the model being trained.

An exemplar-free step sees only new images, so the head's new rows never meet an old
class as a negative: a new class's row fires on the old class it resembles, with a
logit trained to a hard 1 (docs/methods.md, "PASS on top of the distillation"). PASS (Zhu
et al. 2021) feeds the head Gaussian samples around each old class's stored mean
("prototype augmentation"). Here the samples come from the class statistics the bundle
already holds: each old class's mean and covariance in the exact snapshot of the step
that learned it ("own" space; the base space for the base step's classes).

The head reads the student's features, which move while the step trains (its free
weights and BatchNorm change; KD on new images does not pin where old images land).
So the Gaussians are moved into the student's current space once per epoch: per
earlier step, a ridge map from that snapshot's features to the student's, both of this
step's images (each snapshot is exact and runs on them), moves its classes' Gaussians:
mean mu A + b, covariance A^T S A. Everything is in FeCAM's Tukey space
(runtime/class_stats.py); a sample z becomes the feature max(z, 0) ** (1 / beta) that the
head reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .bundle import Bundle
from .class_stats import TUKEY_BETA, ClassStats, pooled_features, tukey
from .classifier import own_stats
from .engine import StepContext
from .linear_from_stats import covariance_factors
from .losses import distillation_bce

RIDGE = 0.1  # the map's ridge, as a share of the mean variance of its inputs
MAP_IMAGES = 1024  # the step's images the old classes' maps are fitted on, at most


@dataclass
class OldClassSampler:
    """Gaussians of the old classes (head indices 0..n-1) in the Tukey space of one
    model; `sample` draws features for its head."""

    mean: torch.Tensor  # (n, D)
    factor: torch.Tensor  # (n, D, D), factor @ factor.T = covariance

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` features of uniformly drawn old classes, and their class indices."""
        labels = torch.randint(0, len(self.mean), (count,), generator=generator)
        noise = torch.randn(count, self.mean.shape[1], 1, generator=generator)
        z = self.mean[labels] + (self.factor[labels] @ noise).squeeze(-1)
        return z.clamp(min=0).pow(1.0 / TUKEY_BETA), labels


def ridge_map(source: torch.Tensor, target: torch.Tensor, ridge: float = RIDGE
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b): target ~ source @ A + b by ridge regression in float64, shrunk towards
    A = I (the spaces are of one network whose shared weights stay: where the images do
    not say otherwise, a feature keeps its value)."""
    x, y = source.double(), target.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    a = torch.eye(len(gram), dtype=gram.dtype) + torch.linalg.solve(gram + penalty,
                                                                      xc.T @ (yc - xc))
    return a, y_mean - x_mean @ a


def transported(stats: ClassStats, a: torch.Tensor, b: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and covariances of `stats` after the affine map z -> z A + b. The map's
    residual covariance is not added: it holds the map's errors on the new classes,
    and Gaussians widened by it covered the new classes' features (docs/methods.md)."""
    mean = stats.mean.double() @ a + b
    cov = a.T @ stats.covariances().double() @ a
    return mean, cov


@dataclass
class OldClassSources:
    """Per earlier step: its classes' statistics in its own snapshot, and that snapshot's
    Tukey features of this step's images (what a map to another space is fitted on)."""

    stats: list[ClassStats]
    features: list[torch.Tensor]

    @staticmethod
    @torch.no_grad()
    def of(previous: Bundle, teacher_model: Callable[[int], nn.Module], images: torch.Tensor,
           device) -> OldClassSources:
        steps = range(1, previous.num_steps + 1)
        features = [tukey(pooled_features(teacher_model(s), images, device)).double()
                    for s in steps]
        # the head reads the last stage: of `stages` statistics, its block
        return OldClassSources([own_stats(previous, s).last_dims(f.shape[1])
                                for s, f in zip(steps, features)], features)

    def sampler_for(self, features: torch.Tensor) -> OldClassSampler:
        """Every old class moved into the space whose features of the same images are
        `features`."""
        target = tukey(features).double()
        means, covs = [], []
        for stats, source in zip(self.stats, self.features):
            mean, cov = transported(stats, *ridge_map(source, target))
            means.append(mean)
            covs.append(cov)
        return OldClassSampler(torch.cat(means).float(),
                               covariance_factors(torch.cat(covs)).float())


class OldClassTerm:
    """BCE of the head on pseudo-features of the old classes, one-hot targets; their
    Gaussians move into the student's current space every `every` batches."""

    def __init__(self, sources: OldClassSources, images: torch.Tensor, every: int,
                 generator: torch.Generator):
        self.sources, self.images, self.every = sources, images, every
        self.generator, self.batches, self.sampler = generator, 0, None

    @staticmethod
    def for_step(ctx: StepContext) -> OldClassTerm:
        """The term of the step `ctx` runs: maps fitted on (up to MAP_IMAGES of) its
        new-class images, the Gaussians moved every N // batch size batches (about once
        an epoch: an epoch's last, partial batch is not counted)."""
        images = ctx.data.images[ctx.data.labels >= ctx.n_old][:MAP_IMAGES]
        sources = OldClassSources.of(ctx.previous, ctx.teacher_model, images, ctx.device)
        return OldClassTerm(sources, images, max(1, len(ctx.data.labels) // ctx.config.batch_size),
                            torch.Generator().manual_seed(ctx.config.seed + 7 * ctx.step))

    def loss(self, ctx: StepContext, count: int, reduction: str) -> torch.Tensor:
        if self.batches % self.every == 0:
            self.sampler = self.sources.sampler_for(
                pooled_features(ctx.model, self.images, ctx.device))
            ctx.model.train()
        self.batches += 1
        features, labels = self.sampler.sample(count, self.generator)
        logits = ctx.model.head(features.to(ctx.device))
        no_teachers = logits.new_zeros(count, 0)
        return distillation_bce(logits, no_teachers, labels.to(ctx.device), reduction)
