"""Linear classifiers built from class statistics alone (no stored image).

Both read Tukey-transformed features (the space the statistics are stored in) and give
an ordinary linear layer, scores = tukey(f) @ W.T + b:

- `lda_head`: linear discriminant analysis, the closed-form Bayes classifier for Gaussian
  classes with one shared covariance. The shared covariance is the count-weighted mean of
  the stored class covariances, shrunk towards its mean variance (FeCAM Eq. 9's first
  term) so it is invertible with few images per class.
- `pseudo_feature_head`: a softmax head trained on Gaussian pseudo-features drawn from
  every class's stored mean and covariance, equally many per class, so old and new
  classes weigh the same (the rebalancing of exemplar-free methods such as FeTrIL/EFC,
  with the frozen base snapshot's features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .class_stats import ClassStats, tukey
from .stats_classifier import VARIANCE_FLOOR


def shared_covariance(stats: ClassStats, shrinkage: float = 1.0) -> torch.Tensor:
    """Count-weighted within-class covariance + shrinkage * mean variance * I (float64)."""
    cov = stats.covariances().double()
    weights = (stats.count.double() - 1).clamp(min=1)
    pooled = (cov * weights[:, None, None]).sum(0) / weights.sum()
    v1 = torch.diagonal(pooled).mean().clamp(min=VARIANCE_FLOOR)
    return pooled + shrinkage * v1 * torch.eye(stats.dim, dtype=pooled.dtype)


def lda_head(stats: ClassStats, shrinkage: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (C, D), b (C,)) of LDA with equal priors: w_c = S^-1 mu_c, b_c = -mu_c S^-1 mu_c / 2."""
    mean = stats.mean.double()
    w = torch.linalg.solve(shared_covariance(stats, shrinkage), mean.T).T
    b = -0.5 * (w * mean).sum(1)
    return w.float(), b.float()


def covariance_factors(cov: torch.Tensor) -> torch.Tensor:
    """L with L L^T = cov (+ a tiny jitter) per class: Cholesky, or, for a covariance that
    rounding left a hair below positive semi-definite (statistics are stored at 16 bits),
    V sqrt(max(lambda, 0)) from its eigendecomposition."""
    jitter = VARIANCE_FLOOR * torch.eye(cov.shape[-1], dtype=cov.dtype)
    chol, info = torch.linalg.cholesky_ex(cov + jitter)
    failed = info > 0
    if failed.any():
        values, vectors = torch.linalg.eigh(cov[failed] + jitter)
        chol[failed] = vectors * values.clamp(min=0).sqrt()[:, None, :]
    return chol


def pseudo_features(stats: ClassStats, per_class: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` draws of N(mu_c, Sigma_c) for every class, and their labels."""
    chol = covariance_factors(stats.covariances().double())
    noise = torch.randn(len(stats), per_class, stats.dim, generator=generator, dtype=chol.dtype)
    samples = stats.mean.double()[:, None, :] + noise @ chol.transpose(1, 2)
    labels = torch.arange(len(stats)).repeat_interleave(per_class)
    return samples.reshape(-1, stats.dim).float(), labels


# Gaussian pseudo-features drawn per class to fit the softmax head: 256 until session 18,
# 1024 since (less sampling noise in the fit: +0.1 to +0.9 points of final top-1,
# docs/methods.md, "Where the remaining errors are"). A bundle's classifier metadata
# keeps the count it was written with.
PSEUDO_PER_CLASS = 1024


def pseudo_feature_head(stats: ClassStats, per_class: int = PSEUDO_PER_CLASS,
                        iterations: int = 300, seed: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of a softmax head fitted on balanced pseudo-features of every class."""
    generator = torch.Generator().manual_seed(seed)
    x, y = pseudo_features(stats, per_class, generator)
    return softmax_head(x, y, len(stats), iterations)


def softmax_head(x: torch.Tensor, y: torch.Tensor, n_classes: int, iterations: int = 300
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of a softmax layer on features `x` (N, D), fitted by full-batch L-BFGS with
    a small weight penalty, on standardised features for a well-conditioned fit."""
    scale = x.std(0).clamp(min=VARIANCE_FLOOR)
    shift = x.mean(0)
    # fitted in float32: the same accuracy as float64 to 0.1 point on six base snapshots,
    # 2.5-3x faster (docs/methods.md, "Where the remaining errors are")
    head = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    xs = ((x - shift) / scale).float()
    opt = torch.optim.LBFGS(head.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xs), y) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = head.weight.detach().double() / scale.double()
    b = head.bias.detach().double() - (w * shift.double()).sum(1)
    return w.float(), b.float()


class LinearOnStats(nn.Module):
    """scores = tukey(features) @ W.T + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, beta: float):
        super().__init__()
        self.beta = beta
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(tukey(features, self.beta), self.weight, self.bias)
