"""Loss functions as plain functions over logits and targets.

Reduction: every BCE term is summed over its columns and divided by N * C (C =
classes seen so far), i.e. the mean over the full N x C target matrix, as in
iCaRL's LwF-MC whose lr of 2.0 the M2KD paper adopts. Eq. 1-3 of the paper
write a sum over classes divided by N only; docs/methods.md records this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def bce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def distillation_bce(logits: torch.Tensor, old_targets: torch.Tensor, labels: torch.Tensor
                     ) -> torch.Tensor:
    """M2KD Eq. 2 (and Eq. 1 when every old target comes from the last model): BCE with
    teacher scores `old_targets` on the first n_old columns and one-hot labels on the rest."""
    n, c = logits.shape
    n_old = old_targets.shape[1]
    targets = torch.cat([old_targets, one_hot(labels, c)[:, n_old:]], dim=1)
    return bce_sum(logits, targets) / (n * c)


def auxiliary_distillation(aux_logits: torch.Tensor, old_aux_targets: torch.Tensor,
                           labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """M2KD Eq. 3: distillation from the earlier auxiliary heads on the old classes plus
    `alpha` times a classification term over all classes."""
    n, c = aux_logits.shape
    n_old = old_aux_targets.shape[1]
    distill = bce_sum(aux_logits[:, :n_old], old_aux_targets)
    classify = bce_sum(aux_logits, one_hot(labels, c))
    return (distill + alpha * classify) / (n * c)
