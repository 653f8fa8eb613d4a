"""Magnitude pruning of the free weights (M2KD Algorithm 1)."""

from __future__ import annotations

import torch

from m2kd.runtime.owner_masks import prune_free_weights, visible


def test_prune_keeps_largest_free_weights_and_zeroes_the_rest():
    w = torch.tensor([0.1, -5.0, 0.3, 4.0, -0.2, 9.0, 0.05, -0.7])
    m = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.uint8)  # index 5 owned by step 1
    stats = prune_free_weights(w, m, step=2, ratio=0.75)  # 7 free -> keep round(1.75) = 2
    assert stats.kept == 2 and stats.freed == 5
    assert m.tolist() == [0, 2, 0, 2, 0, 1, 0, 0]
    assert w.tolist() == [0.0, -5.0, 0.0, 4.0, 0.0, 9.0, 0.0, 0.0]


def test_prune_ratio_zero_keeps_every_free_weight():
    w = torch.randn(10)
    m = torch.zeros(10, dtype=torch.uint8)
    prune_free_weights(w, m, step=1, ratio=0.0)
    assert (m == 1).all()


def test_visible_is_eq7_delta():
    m = torch.tensor([0, 1, 2, 3], dtype=torch.uint8)
    assert visible(m, 2).tolist() == [False, True, True, False]
