"""Accuracy metrics of class-incremental learning.

All accuracies are on the test images of every class seen so far ("single head").
"""

from __future__ import annotations

import torch
from torch import nn

from m2kd.runtime.inference import run_in_batches


def predict_logits(model: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    model.eval()
    return run_in_batches(lambda x: model(x).logits, images, device)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.float().mean()) if len(labels) else float("nan")


def step_metrics(logits: torch.Tensor, labels: torch.Tensor, class_steps: list[int]) -> dict:
    """top-1/top-5 on all seen classes, old- and new-class accuracy, and the accuracy on
    each class batch (one row of the step-by-step accuracy matrix)."""
    step_of = torch.tensor(class_steps)[labels]
    current = max(class_steps)
    correct = logits.argmax(dim=1) == labels

    def acc(selection: torch.Tensor) -> float | None:
        return float(correct[selection].float().mean()) if selection.any() else None

    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "old": acc(step_of < current),
        "new": acc(step_of == current),
        "per_batch": [acc(step_of == s) for s in range(1, current + 1)],
    }


def average_incremental_accuracy(top1_per_step: list[float]) -> float:
    """Mean top-1 over all steps, the first included (iCaRL's definition)."""
    return sum(top1_per_step) / len(top1_per_step)


def forgetting(accuracy_matrix: list[list[float | None]]) -> float | None:
    """Mean over earlier class batches of (best accuracy ever - final accuracy)."""
    last = accuracy_matrix[-1]
    drops = []
    for b in range(len(last) - 1):
        history = [row[b] for row in accuracy_matrix if b < len(row) and row[b] is not None]
        if history and last[b] is not None:
            drops.append(max(history) - last[b])
    return sum(drops) / len(drops) if drops else None
