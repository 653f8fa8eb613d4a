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
(rotations, `stats-base`) is held to higher floors, below every measured seed (re-measured
below).

The covariance prior (session 14, `cov_prior` 16 in runtime/classifier.py): the last
step's two classes as if added from 5 training images each (trainer/few_images.py;
new-class top-1, mean of draws 0-2). Re-measured in session 19, with every stage's
statistics (session 17) and the head fitted on 1024 pseudo-features (session 18):
`python benchmarks/learning_floors.py --few-images 5 --draws 5`, seeds 0-4, 2 threads:
final 98.1, 98.9, 98.6, 98.9, 97.5, old 97.6-98.6, new 97.2-100 (seeds 0 and 1: old
97.6 / 98.6, new 100 / 100; session 10's 64-d statistics: final 95.0-97.8). From 5
images: 96.7, 85.2, 83.3, 87.8, 65.3 with the prior (session 14: 92.5, 81.9, 78.3, 83.6,
60.6); 88.2, 59.3, 64.3, 76.5, 53.2 without it. The default run's floors sit 1.5 points
or more below every seed and 2.1 below the tested ones; the few-image floor sits 7.2
below seed 1, which falls 18.7 below it without the prior; old classes stay >= 97.6 on
every draw of the tested seeds.

The sigmoid head with PASS's two terms (`m2kd_pass`: the old classes' pseudo-features
and feature distillation, the previous model with the batch's BatchNorm statistics since
session 16; docs/methods.md), the same run (`python benchmarks/learning_floors.py
--method m2kd_pass`): final head top-1 76.3, 77.4, 79.4, 73.0, 69.6 (seeds 0-4). With
session 15's eval-mode teacher: 64.1, 52.9, 79.1, 44.8, 53.2; the paper's `m2kd` head on
seeds 0 and 1: 19.2 and 39.8 (old 11.5 and 25.1). The floor (tested seed 0) sits 9.6
points below the lowest seed and 16 below seed 0, which falls 41 points under it without
PASS. Session 15's form (seed 0: 64.1) would pass it too; the teacher's statistics are
guarded by tests/test_old_class_features.py.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from m2kd.runtime.bundle import load_bundle
from m2kd.runtime.engine import StepConfig
from m2kd.trainer.datasets import load_digits_dataset
from m2kd.trainer.few_images import few_image_bundle, old_new_accuracy
from m2kd.trainer.protocol import Protocol, run_protocol

FINAL_FLOOR = 0.92
OLD_FLOOR = 0.92
NEW_FLOOR = 0.88
TRAIN_NEW_FLOOR = 0.85


ROTATIONS_FINAL_FLOOR = 0.96
ROTATIONS_OLD_FLOOR = 0.955
ROTATIONS_NEW_FLOOR = 0.94
FEW_IMAGES_NEW_FLOOR = 0.78
PASS_HEAD_FLOOR = 0.60


def _order(seed: int) -> list[int]:
    return [int(c) for c in torch.randperm(10, generator=torch.Generator().manual_seed(seed))]


def _on_device_protocol(seed: int, out, method: str = "m2kd", **config) -> list[dict]:
    torch.set_num_threads(2)
    config = StepConfig(device="cpu", augment="none", seed=seed, progress=False, **config)
    results = run_protocol(load_digits_dataset(seed=seed), Protocol(6, 2, _order(seed)), method,
                           config, out, log=lambda s: None)
    return results["steps"]


@pytest.fixture(scope="module", params=[0, 1])
def default_run(request, tmp_path_factory):
    """The product's defaults (rotations, stats-base) on the on-device protocol, once per
    seed: (seed, per-step results, final bundle)."""
    out = tmp_path_factory.mktemp(f"defaults-seed{request.param}")
    steps = _on_device_protocol(request.param, out)
    return request.param, steps, load_bundle(out / "bundle.safetensors")


@pytest.mark.parametrize("seed", [0, 1])
def test_on_device_protocol_learns_new_classes_and_keeps_old_ones(seed, tmp_path):
    steps = _on_device_protocol(seed, tmp_path, base_rotations=False, classifier="stats")
    for row in steps:
        assert row["train"]["train_accuracy_new"] >= TRAIN_NEW_FLOOR, row
    final = steps[-1]
    assert final["top1"] >= FINAL_FLOOR
    assert final["old"] >= OLD_FLOOR and final["new"] >= NEW_FLOOR


def test_rotation_classes_in_the_base_step_keep_the_product_above_its_floors(default_run):
    final = default_run[1][-1]
    assert final["top1"] >= ROTATIONS_FINAL_FLOOR
    assert final["old"] >= ROTATIONS_OLD_FLOOR and final["new"] >= ROTATIONS_NEW_FLOOR


def test_classes_added_from_five_images_each_are_recognised(default_run):
    """The last step's two classes as if added from 5 images each (3 random draws)."""
    seed, _, bundle = default_run
    data, order = load_digits_dataset(seed=seed), _order(seed)
    old, new = zip(*[old_new_accuracy(few_image_bundle(bundle, data, order, 5, seed=draw),
                                      data, order) for draw in range(3)])
    assert statistics.fmean(new) >= FEW_IMAGES_NEW_FLOOR
    assert min(old) >= ROTATIONS_OLD_FLOOR


def test_pass_keeps_the_sigmoid_head_recognising_old_and_new_classes(tmp_path):
    final = _on_device_protocol(0, tmp_path, "m2kd_pass")[-1]
    assert final["head"]["top1"] >= PASS_HEAD_FLOOR
