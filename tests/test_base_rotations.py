"""Rotation classes in the base step: learned, then dropped without a trace."""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime.base_rotations import rotation_names, with_rotations
from m2kd.runtime.class_stats import pooled_features, statistics_of
from m2kd.runtime.engine import run_step
from m2kd.runtime.errors import ConfigError
from m2kd.runtime.m2kd import M2KD
from m2kd.runtime.reconstruct import model_of_step
from tests.conftest import fast_config, steps_of


def test_each_quarter_turn_is_a_class_of_its_own():
    images = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 1, 3, 3)
    x, y = with_rotations(images, torch.tensor([0, 1]), 2)
    assert y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert torch.equal(x[:2], images)
    assert torch.equal(x[2, 0], images[0, 0].rot90(1))  # label 2: class 0 turned once
    assert torch.equal(x[7, 0], images[1, 0].rot90(3))
    assert rotation_names(["a", "b"]) == ["a@90", "b@90", "a@180", "b@180", "a@270", "b@270"]
    with pytest.raises(ConfigError, match="square images"):
        with_rotations(torch.zeros(1, 1, 3, 4), torch.tensor([0]), 1)


def test_keeping_the_first_classes_keeps_their_rows(digits):
    (names, data), = steps_of(digits, 1)
    _, report = run_step(None, data, names, M2KD(), fast_config(epochs=1),
                         arch="resnet_small", input_spec=digits.input_spec)
    model = model_of_step(_, 1)
    before = model(data.images[:5])
    model.add_classes(6)
    model.keep_classes(2)
    after = model(data.images[:5])
    assert after.logits.shape == (5, 2)
    assert torch.equal(after.logits, before.logits[:, :2])
    assert torch.equal(after.aux_logits, before.aux_logits[:, :2])


def test_the_base_step_trains_on_rotations_and_stores_only_its_real_classes(
        digits, trained_batches):
    (names, data), = steps_of(digits, 1)
    bundle, report = run_step(None, data, names, M2KD(),
                              fast_config(epochs=2, base_rotations=True),
                              arch="resnet_small", input_spec=digits.input_spec)
    labels = torch.cat([b.labels for b in trained_batches])
    assert set(labels.tolist()) == set(range(8))  # 2 classes x 4 turns
    assert report.images_seen == 2 * 4 * len(data.labels)
    assert bundle.classes == names and bundle.steps[0].head["weight"].shape[0] == 2
    # the statistics are those of the unrotated images in the stored snapshot
    features = pooled_features(model_of_step(bundle, 1), data.images, "cpu",
                               bundle.statistics_features)
    expected = statistics_of(features.double(), data.labels, [0, 1])
    stored = bundle.steps[0].stats["base"]
    for got, want in ((stored.mean, expected.mean), (stored.cov, expected.cov)):
        assert torch.allclose(got, want.float(), rtol=2e-3, atol=1e-5)  # stored at 16 bits
    assert stored.count.tolist() == [int((data.labels == c).sum()) for c in (0, 1)]


def test_later_steps_never_rotate(three_step_bundle, digits, trained_batches):
    (names, data), = steps_of(digits, 4)[3:4]
    bundle, _ = run_step(three_step_bundle[-1], data, names, M2KD(),
                         fast_config(epochs=1, base_rotations=True))
    assert set(torch.cat([b.labels for b in trained_batches]).tolist()) == {6, 7}
    assert bundle.classes[-2:] == names
