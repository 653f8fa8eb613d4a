"""Learning quality on real data: a regression here means the product stopped learning.

scikit-learn digits (8x8, 10 classes), the on-device protocol: 6 base classes, then
two steps of 2 classes, exemplar-free M2KD with the default recipe.

Without rotation classes, classifier `stats` (pseudo-feature head on the base snapshot +
FeCAM in each class's own snapshot), measured over seeds 0-4 (`python
benchmarks/learning_floors.py --no-base-rotations --classifier stats`, the same run;
order = torch.randperm(10) with the seed; 3 fine-tune epochs after pruning): final top-1
92.8-97.8, final old 92.7-97.9, final new 93.1-100 (seeds 0 and 1, tested here: final
95.0 / 97.5, old 94.4 / 96.9, new 97.2 / 100.0), and every step's training accuracy on
its own new classes >= 91.6. Floors sit below every seed, with 2.4 points or more of
margin on the tested seeds. FeCAM in the base snapshot alone measured final
87.7-96.1, new 62.5-94.4 (seed 1: new 86.1, below the new floor); main before the recipe
fix trained later steps' new classes to 0-8 % and had no statistics classifier (its
head reaches 30-50 % here).

Rotation classes in the base step (the default since session 9, runtime/base_rotations.py;
`--classifier stats`, seeds 0-4, 2 threads): final 96.1-98.1, old 95.5-98.6, new 95.8-98.6
(seeds 0 and 1: final 97.2 / 96.9, old 96.9 / 96.9, new 98.6 / 97.2). With the default
classifier since session 10, `stats-base` (the same head + FeCAM in the base space: one
pass; `python benchmarks/learning_floors.py`): final 95.0-97.8, old 95.1-98.3, new
91.7-98.6 (seeds 0 and 1: final 97.5 / 97.8, old 97.2 / 98.3, new 98.6 / 95.8). The sigmoid head
no longer fits every step's new classes there: in seed 0's step 3 it labels all training
images of the new 2 as the old 8 (the step-2 teacher scores them as 8 and its target
wins), train-new 49.1; seed 4: 61.0; the other three seeds >= 97.6. The statistics
classifier is unaffected (seed 0's new classes: 98.6). So the head's fit is asserted on
the recipe without rotations (with `stats`, whose floors these are), and the default run
(rotations, `stats-base`) is held to higher floors, below every measured seed.
"""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime.engine import StepConfig
from m2kd.trainer.datasets import load_digits_dataset
from m2kd.trainer.protocol import Protocol, run_protocol

FINAL_FLOOR = 0.92
OLD_FLOOR = 0.92
NEW_FLOOR = 0.88
TRAIN_NEW_FLOOR = 0.85


ROTATIONS_FINAL_FLOOR = 0.945
ROTATIONS_OLD_FLOOR = 0.94
ROTATIONS_NEW_FLOOR = 0.90


def _on_device_protocol(seed: int, out, **config) -> list[dict]:
    torch.set_num_threads(2)
    data = load_digits_dataset(seed=seed)
    order = [int(c) for c in torch.randperm(10, generator=torch.Generator().manual_seed(seed))]
    config = StepConfig(device="cpu", augment="none", seed=seed, progress=False, **config)
    results = run_protocol(data, Protocol(6, 2, order), "m2kd", config, out,
                           log=lambda s: None)
    return results["steps"]


@pytest.mark.parametrize("seed", [0, 1])
def test_on_device_protocol_learns_new_classes_and_keeps_old_ones(seed, tmp_path):
    steps = _on_device_protocol(seed, tmp_path, base_rotations=False, classifier="stats")
    for row in steps:
        assert row["train"]["train_accuracy_new"] >= TRAIN_NEW_FLOOR, row
    final = steps[-1]
    assert final["top1"] >= FINAL_FLOOR
    assert final["old"] >= OLD_FLOOR and final["new"] >= NEW_FLOOR


@pytest.mark.parametrize("seed", [0, 1])
def test_rotation_classes_in_the_base_step_keep_the_product_above_its_floors(seed, tmp_path):
    final = _on_device_protocol(seed, tmp_path)[-1]  # the defaults: rotations, stats-base
    assert final["top1"] >= ROTATIONS_FINAL_FLOOR
    assert final["old"] >= ROTATIONS_OLD_FLOOR and final["new"] >= ROTATIONS_NEW_FLOOR
