"""iCaRL's exemplar memory: herding, budget, nearest mean; clearly reads old images."""

from __future__ import annotations

import torch

from m2kd.trainer.exemplars import ExemplarMemory, herding
from m2kd.trainer.methods import method_spec
from m2kd.trainer.orders import named_order
from m2kd.trainer.protocol import Protocol, run_protocol
from tests.conftest import fast_config


def test_herding_first_pick_is_closest_to_the_mean_and_picks_are_distinct():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.6, 0.8]])
    picks = herding(feats, 3)
    assert picks[0] == 2  # (0.7, 0.7) is nearest to the mean (0.575, 0.625)
    assert len(set(picks)) == 3


def test_memory_keeps_the_budget_and_herding_order():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return type("Out", (), {"features": x.flatten(1)})()

    memory = ExemplarMemory(total=6)
    x = torch.randn(20, 2)
    y = torch.tensor([0] * 10 + [1] * 10)
    memory.update(Identity(), x, y, [0, 1], "cpu")
    assert [len(v) for v in memory.images.values()] == [3, 3]
    first = memory.images[0].clone()
    memory.update(Identity(), torch.randn(10, 2), torch.full((10,), 2), [2], "cpu")
    assert [len(v) for v in memory.images.values()] == [2, 2, 2]
    assert torch.equal(memory.images[0], first[:2])
    assert memory.stored_bytes() == 6 * 2


def test_icarl_trains_on_exemplars_of_old_classes(digits, tmp_path, step_labels):
    results = run_protocol(digits, Protocol(2, 2, named_order("seed:0", 10), max_steps=2),
                           "icarl", fast_config(epochs=1), tmp_path, log=lambda s: None,
                           exemplars_per_class=5)
    assert step_labels == [[0, 1], [0, 1, 2, 3]]  # old classes come from the memory
    assert results["classifier"] == "nearest mean of exemplars"
    assert results["memory"]["exemplar_bytes"] == 4 * 5 * 64
    assert method_spec("icarl").factory().reads_old_data
