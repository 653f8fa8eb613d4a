"""PASS on top of the distillation: the ridge map, the moved Gaussians, the sampler, the
loss term that feeds them to the head, and the feature distillation."""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime.class_stats import ClassStats, pack, tukey
from m2kd.runtime.errors import ConfigError
from m2kd.runtime.losses import feature_distillation
from m2kd.runtime.m2kd import M2KD, M2KDConfig, feature_teacher
from m2kd.runtime.old_class_features import OldClassSampler, ridge_map, transported
from m2kd.runtime.reconstruct import model_of_step
from m2kd.trainer.orders import named_order
from m2kd.trainer.protocol import Protocol, run_protocol
from tests.conftest import fast_config


def test_the_ridge_map_recovers_an_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=g)
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [0.5, 0.0, 1.0]])
    b = torch.tensor([0.3, -0.2, 1.0])
    noise = 0.1 * torch.randn(4000, 3, generator=g)
    fit_a, fit_b = ridge_map(x, x @ a + b + noise, ridge=1e-6)
    assert torch.allclose(fit_a.float(), a, atol=0.01)
    assert torch.allclose(fit_b.float(), b, atol=0.01)


def test_a_moved_gaussian_has_mean_mu_a_plus_b_and_covariance_a_s_a():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    stats = ClassStats(torch.tensor([10]), torch.tensor([[1.0, -1.0]]), pack(cov)[None])
    a = torch.tensor([[0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    mean, moved = transported(stats, a, b)
    assert mean.tolist() == [[-2.0, 3.0]]
    assert torch.allclose(moved[0], torch.tensor([[9.0, 1.5], [1.5, 2.0]], dtype=torch.float64))


def test_the_sampler_draws_each_old_class_around_its_mean_in_tukey_space():
    mean = torch.tensor([[4.0, 1.0], [1.0, 4.0]])
    factor = 0.1 * torch.eye(2).repeat(2, 1, 1)
    features, labels = OldClassSampler(mean, factor).sample(2000, torch.Generator().manual_seed(1))
    assert set(labels.tolist()) == {0, 1}
    assert (features >= 0).all()  # what the head reads: pooled ReLU features
    for c in (0, 1):
        assert torch.allclose(tukey(features[labels == c]).mean(0), mean[c], atol=0.02)


def test_the_old_classes_pseudo_features_reach_the_loss(digits, tmp_path):
    protocol = Protocol(2, 2, named_order("seed:0", 10), max_steps=3)
    results = run_protocol(digits, protocol, "m2kd_proto", fast_config(epochs=1), tmp_path,
                           log=lambda s: None)
    losses = [row["train"]["epoch_losses"][0] for row in results["steps"]]
    assert "old" not in losses[0]  # the base step has no old classes
    assert all(loss["old"] > 0 and "features" not in loss for loss in losses[1:])


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_a_weight_of_the_old_classes_that_is_not_a_number_above_zero_is_refused(weight):
    with pytest.raises(ConfigError, match="pseudo-features"):
        M2KD(M2KDConfig(old_features=weight))


def test_a_space_mapped_onto_itself_is_left_as_it_is():
    x = torch.rand(50, 4, generator=torch.Generator().manual_seed(2))
    a, b = ridge_map(x, x)  # the default ridge shrinks towards the identity
    assert torch.allclose(a, torch.eye(4, dtype=a.dtype))
    assert torch.allclose(b, torch.zeros(4, dtype=b.dtype), atol=1e-12)


def test_pass_adds_the_feature_distillation_and_the_pseudo_features(digits, tmp_path):
    protocol = Protocol(2, 2, named_order("seed:0", 10), max_steps=2)
    results = run_protocol(digits, protocol, "m2kd_pass", fast_config(epochs=1), tmp_path,
                           log=lambda s: None)
    first, second = (row["train"]["epoch_losses"][0] for row in results["steps"])
    assert "features" not in first and "old" not in first
    assert second["features"] > 0 and second["old"] > 0


def test_feature_distillation_is_the_batch_mean_of_squared_distances():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    assert feature_distillation(student, teacher).item() == pytest.approx((4 + 25) / 2)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_a_feature_distillation_weight_that_is_not_a_number_above_zero_is_refused(weight):
    with pytest.raises(ConfigError, match="feature distillation"):
        M2KD(M2KDConfig(feature_distillation=weight))


def test_the_feature_teacher_normalises_by_the_batch_and_keeps_its_running_statistics(
        three_step_bundle, digits):
    """"batch": the previous model computes features as the training student does (batch
    statistics) and a forward never moves its running statistics; "running": eval mode."""
    bundle = three_step_bundle[-1]
    images = digits.train_images[:32]
    running = {k: v.clone() for k, v in model_of_step(bundle).state_dict().items()
               if "running" in k}
    teacher = feature_teacher(model_of_step(bundle), "batch")
    with torch.no_grad():
        features = teacher(images).features
        teacher(images[:8])  # another batch: its statistics must not stay behind
        as_training = model_of_step(bundle).train()(images).features
        in_eval = model_of_step(bundle)(images).features
        assert torch.allclose(features, as_training, atol=1e-5)
        assert not torch.allclose(features, in_eval, atol=1e-3)
        for name, value in teacher.state_dict().items():
            if "running" in name:
                assert torch.equal(value, running[name]), name
        assert torch.equal(feature_teacher(model_of_step(bundle), "running")(images).features,
                           in_eval)


def test_feature_statistics_other_than_batch_or_running_are_refused():
    with pytest.raises(ConfigError, match="feature_statistics must be 'batch' or 'running'"):
        M2KD(M2KDConfig(feature_statistics="mean"))
