"""Loss functions on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from m2kd.runtime.losses import auxiliary_distillation, distillation_bce
from m2kd.runtime.teachers import assign_teachers


def _bce(z: float, t: float) -> float:
    s = 1 / (1 + math.exp(-z))
    return -(t * math.log(s) + (1 - t) * math.log(1 - s))


def test_distillation_bce_uses_teacher_scores_on_old_and_labels_on_new():
    logits = torch.tensor([[0.0, 1.0, -1.0]])  # 1 old class, 2 new
    old = torch.tensor([[0.25]])
    labels = torch.tensor([2])
    expected = (_bce(0.0, 0.25) + _bce(1.0, 0.0) + _bce(-1.0, 1.0)) / 3
    assert distillation_bce(logits, old, labels, "mean").item() == pytest.approx(expected,
                                                                          rel=1e-6)
    # Eq. 2 as written: summed over classes, divided by the batch size only
    assert distillation_bce(logits, old, labels).item() == pytest.approx(3 * expected, rel=1e-6)


def test_distillation_bce_without_old_classes_is_plain_bce():
    logits = torch.tensor([[2.0, -2.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    expected = (_bce(2, 1) + _bce(-2, 0) + _bce(0.5, 0) + _bce(0.5, 1)) / 4
    got = distillation_bce(logits, torch.zeros(2, 0), labels, "mean")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_auxiliary_distillation_is_eq3_with_alpha():
    aux = torch.tensor([[1.0, -0.5]])  # 1 old class, 1 new
    old = torch.tensor([[0.8]])
    labels = torch.tensor([1])
    alpha = 0.5
    distill = _bce(1.0, 0.8)
    classify = _bce(1.0, 0.0) + _bce(-0.5, 1.0)
    expected = (distill + alpha * classify) / 2
    assert auxiliary_distillation(aux, old, labels, alpha, "mean").item() == pytest.approx(
        expected, rel=1e-6)
    assert auxiliary_distillation(aux, old, labels, alpha).item() == pytest.approx(
        2 * expected, rel=1e-6)


def test_teacher_assignment_policies():
    steps = [1, 1, 2, 3, 3]  # classes introduced at steps 1..3; now step 4
    assert assign_teachers(steps, 4, "all") == [1, 1, 2, 3, 3]  # M2KD Eq. 2
    assert assign_teachers(steps, 4, "last") == [3, 3, 3, 3, 3]  # LwF-MC Eq. 1
    assert assign_teachers(steps, 4, "all", skip=1) == [2, 2, 2, 3, 3]  # skip1
    assert assign_teachers(steps, 4, "all", skip=2) == [3, 3, 3, 3, 3]  # skip2
    assert assign_teachers([1, 2], 3, "all", skip=5) == [2, 2]  # never beyond the last model
