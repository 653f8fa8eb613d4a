"""Batched top-k prediction with the torch backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Prediction:
    """Top-k classes of one image; scores are softmax probabilities over the step's classes."""

    labels: list[str]
    scores: list[float]

    def to_dict(self) -> dict:
        return {"top": [{"label": label, "score": score}
                        for label, score in zip(self.labels, self.scores)]}


@torch.no_grad()
def run_in_batches(fn, images: torch.Tensor, device, batch_size: int = 512) -> torch.Tensor:
    """`fn` over `images` in chunks on `device`; the results concatenated on the CPU."""
    return torch.cat([fn(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def predict_batch(scorer: nn.Module, classes: list[str], images: torch.Tensor, top_k: int,
                  device: torch.device, batch_size: int = 256) -> list[Prediction]:
    """`scorer` maps images to scores (runtime/classifier.py's `StepScorer`)."""
    scorer.eval()
    k = max(1, min(top_k, len(classes)))
    predictions = []
    for start in range(0, len(images), batch_size):
        logits = scorer(images[start:start + batch_size].to(device)).float()
        scores, index = torch.softmax(logits, dim=1).topk(k, dim=1)
        for s_row, i_row in zip(scores.cpu().tolist(), index.cpu().tolist()):
            predictions.append(Prediction([classes[i] for i in i_row], s_row))
    return predictions
