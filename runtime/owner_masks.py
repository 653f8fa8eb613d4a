"""Owner-mask arithmetic (PackNet-style, M2KD Section 3.3 and Algorithm 1).

`M = 0` marks a free weight, `M = j` a weight owned by step j. The model of
step k sees `W * (1 <= M <= k)` (Eq. 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bundle import MASK_DTYPE


def visible(mask: torch.Tensor, step: int) -> torch.Tensor:
    """Eq. 7's delta: the weights the model of `step` uses."""
    return (mask >= 1) & (mask <= step)


def empty_masks(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(w.shape, dtype=MASK_DTYPE) for name, w in weights.items()}


@dataclass
class PruneStats:
    kept: int  # free weights that became owned by the step
    freed: int  # free weights zeroed and left free

    @property
    def kept_fraction(self) -> float:
        total = self.kept + self.freed
        return self.kept / total if total else 0.0


@torch.no_grad()
def prune_free_weights(weight: torch.Tensor, mask: torch.Tensor, step: int,
                       ratio: float) -> PruneStats:
    """Among the free weights of one layer, give the largest `1 - ratio` by magnitude to
    `step` and zero the rest (Algorithm 1: threshold, zero, update mask). In place."""
    free = mask == 0
    n_free = int(free.sum())
    n_keep = int(round((1.0 - ratio) * n_free))
    if n_keep > 0:
        magnitudes = weight.abs().masked_fill(~free.to(weight.device), -1.0).flatten()
        keep_idx = torch.topk(magnitudes, n_keep, sorted=False).indices
        mask.view(-1)[keep_idx.to(mask.device)] = step
    still_free = mask == 0
    weight.masked_fill_(still_free.to(weight.device), 0.0)
    return PruneStats(kept=n_keep, freed=n_free - n_keep)


def free_fraction(mask: torch.Tensor) -> float:
    return float((mask == 0).float().mean()) if mask.numel() else 0.0
