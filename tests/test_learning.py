"""Learning quality on real data: a regression here means the product stopped learning.

scikit-learn digits (8x8, 10 classes), the on-device protocol: 6 base classes, then
two steps of 2 classes, exemplar-free M2KD with the default recipe and classifier.
Floors are set from measurement with margin (docs/methods.md, "Regression floors"):
over seeds 0-4 the final top-1 with the statistics classifier measured
FINAL_MEASURED, and every step's new classes were learned (train accuracy on the
step's own new images) to at least TRAIN_NEW_MEASURED. Main before the recipe fix
trained the new classes of later steps to 0-8 % and had no statistics classifier.
"""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime.engine import StepConfig
from m2kd.trainer.datasets import load_digits_dataset
from m2kd.trainer.protocol import Protocol, run_protocol

FINAL_FLOOR = 0.85
TRAIN_NEW_FLOOR = 0.85


@pytest.mark.parametrize("seed", [0, 1])
def test_on_device_protocol_learns_new_classes_and_keeps_old_ones(seed, tmp_path):
    torch.set_num_threads(2)
    data = load_digits_dataset(seed=seed)
    order = [int(c) for c in torch.randperm(10, generator=torch.Generator().manual_seed(seed))]
    config = StepConfig(device="cpu", augment="none", seed=seed, progress=False)
    results = run_protocol(data, Protocol(6, 2, order), "m2kd", config, tmp_path,
                           log=lambda s: None)
    steps = results["steps"]
    for row in steps:
        assert row["train"]["train_accuracy_new"] >= TRAIN_NEW_FLOOR, row
    final = steps[-1]
    assert final["top1"] >= FINAL_FLOOR
    assert final["new"] >= FINAL_FLOOR and final["old"] >= FINAL_FLOOR
