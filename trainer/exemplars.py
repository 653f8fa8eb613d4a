"""iCaRL's exemplar memory (Rebuffi et al. 2017): herding selection (Alg. 4), memory
reduction (Alg. 5) and nearest-mean-of-exemplars classification (Alg. 1).

This READS AND STORES OLD IMAGES: it exists to compare exemplar-based methods with
the exemplar-free ones, never on the device path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2kd.runtime.inference import run_in_batches


def features(model: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    """L2-normalised pooled features (iCaRL's phi), on the CPU."""
    model.eval()
    return F.normalize(run_in_batches(lambda x: model(x).features, images, device), dim=1)


def herding(feats: torch.Tensor, m: int) -> list[int]:
    """Alg. 4: pick, one at a time, the sample that keeps the running mean of the chosen
    features closest to the class mean."""
    mu = feats.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(feats), dtype=torch.bool)
    for k in range(1, min(m, len(feats)) + 1):
        distances = (mu - (running + feats) / k).norm(dim=1)
        distances[~available] = float("inf")
        i = int(distances.argmin())
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return chosen


class ExemplarMemory:
    """Per-class exemplars; `per_class` fixed (PODNet) or `total` shared (iCaRL's K)."""

    def __init__(self, per_class: int | None = None, total: int | None = None):
        self.per_class, self.total = per_class, total
        self.images: dict[int, torch.Tensor] = {}  # head index -> sorted by herding rank

    def budget(self, n_classes: int) -> int:
        return self.per_class if self.per_class is not None else self.total // n_classes

    def update(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               new_classes: list[int], device) -> None:
        """Alg. 5 (shrink every class to the budget), then Alg. 4 for the new classes."""
        m = self.budget(len(self.images) + len(new_classes))
        self.images = {c: x[:m] for c, x in self.images.items()}  # herding order: keep first
        for c in new_classes:
            x = images[labels == c]
            self.images[c] = x[herding(features(model, x, device), m)]

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.images:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        xs = list(self.images.values())
        labels = [torch.full((len(x),), c, dtype=torch.long) for c, x in self.images.items()]
        return torch.cat(xs), torch.cat(labels)

    def stored_bytes(self) -> int:
        """As 8-bit images, the way a device would keep them."""
        return sum(x[0].numel() * len(x) for x in self.images.values())

    @torch.no_grad()
    def nme_scores(self, model: nn.Module, images: torch.Tensor, n_classes: int, device
                   ) -> torch.Tensor:
        """Alg. 1: minus the distance to each class's normalised exemplar mean."""
        means = torch.stack([F.normalize(features(model, self.images[c], device).mean(0), dim=0)
                             for c in range(n_classes)])
        return -torch.cdist(features(model, images, device), means)
