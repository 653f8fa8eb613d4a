"""Loss functions as plain functions over logits and targets.

Reduction (`reduction`):
- "batch" (default): every BCE term is summed over its columns and divided by N,
  the batch size, exactly as M2KD Eq. 1-3 write it;
- "mean": divided by N * C (C = classes seen so far), the mean over the N x C target
  matrix, as in iCaRL's LwF-MC whose lr of 2.0 the M2KD paper adopts.
"mean" shrinks every gradient by C, so with 2-10 classes and an lr tuned for
"batch" the new classes are barely trained (docs/methods.md, "The recipe").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("batch", "mean")


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def bce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def reduce_sum(total: torch.Tensor, n: int, c: int, reduction: str = "batch") -> torch.Tensor:
    """A loss summed over an N x C matrix, divided as `reduction` says."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return total / (n * c if reduction == "mean" else n)


def distillation_bce(logits: torch.Tensor, old_targets: torch.Tensor, labels: torch.Tensor,
                     reduction: str = "batch") -> torch.Tensor:
    """M2KD Eq. 2 (and Eq. 1 when every old target comes from the last model): BCE with
    teacher scores `old_targets` on the first n_old columns and one-hot labels on the rest."""
    n, c = logits.shape
    n_old = old_targets.shape[1]
    targets = torch.cat([old_targets, one_hot(labels, c)[:, n_old:]], dim=1)
    return reduce_sum(bce_sum(logits, targets), n, c, reduction)


def auxiliary_distillation(aux_logits: torch.Tensor, old_aux_targets: torch.Tensor,
                           labels: torch.Tensor, alpha: float, reduction: str = "batch"
                           ) -> torch.Tensor:
    """M2KD Eq. 3: distillation from the earlier auxiliary heads on the old classes plus
    `alpha` times a classification term over all classes."""
    n, c = aux_logits.shape
    n_old = old_aux_targets.shape[1]
    distill = bce_sum(aux_logits[:, :n_old], old_aux_targets)
    classify = bce_sum(aux_logits, one_hot(labels, c))
    return reduce_sum(distill + alpha * classify, n, c, reduction)


def feature_distillation(features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """PASS's knowledge distillation on features: the squared distance between the
    student's and the teacher's pooled features, summed over the features and averaged
    over the batch (PASS's public code takes the distance of the whole batch, unsquared)."""
    return (features.float() - teacher_features.float()).pow(2).sum(1).mean()
