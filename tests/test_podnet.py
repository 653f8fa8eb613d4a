"""PODNet's losses on hand-computed cases; the NCA margin really changes the loss."""

from __future__ import annotations

import math

import pytest
import torch

from m2kd.runtime.engine import run_step
from m2kd.runtime.reconstruct import model_of_step
from m2kd.trainer.podnet import (LocalSimilarityClassifier, PODNet, PODNetConfig, kmeans,
                                 nca_loss, pod_flat, pod_spatial)
from tests.conftest import fast_config, steps_of


def test_nca_loss_is_eq10_and_the_margin_matters():
    scores = torch.tensor([[0.1, 0.4, -0.1]])  # the true class 0 is not the best: no clipping
    labels = torch.tensor([0])
    eta = torch.tensor(2.0)
    expected = -(2.0 * (0.1 - 0.1) - math.log(math.exp(0.8) + math.exp(-0.2)))
    assert nca_loss(scores, labels, eta, 0.1).item() == pytest.approx(expected, rel=1e-6)
    without = nca_loss(scores, labels, eta, 0.0).item()
    with_margin = nca_loss(scores, labels, eta, 0.6).item()
    assert with_margin == pytest.approx(without + 2.0 * 0.6, rel=1e-6)


def test_nca_hinge_clips_at_zero_and_gives_finite_gradients():
    scores = torch.tensor([[0.9, -0.9]], requires_grad=True)
    eta = torch.tensor(10.0, requires_grad=True)
    loss = nca_loss(scores, torch.tensor([0]), eta, 0.0)
    assert loss.item() == 0.0
    loss = nca_loss(scores, torch.tensor([1]), eta, 0.0)
    loss.backward()
    assert torch.isfinite(eta.grad) and torch.isfinite(scores.grad).all()


def test_pod_spatial_pools_width_and_height():
    old = torch.zeros(1, 1, 2, 2)
    old[0, 0, 0, 0] = 1.0
    assert pod_spatial(old, old).item() == 0.0
    new = torch.zeros(1, 1, 2, 2)
    new[0, 0, 1, 1] = 1.0
    # pooled (width sums over W, height over H), normalised: old (1,0,1,0)/sqrt2,
    # new (0,1,0,1)/sqrt2 -> squared distance 2.
    assert pod_spatial(old, new).item() == pytest.approx(2.0)


def test_pod_flat_is_squared_distance_of_normalised_embeddings():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    assert pod_flat(a, b).item() == pytest.approx(0.2 ** 2 + 0.2 ** 2)


def test_lsc_imprints_k_proxies_per_class_and_scores_each_class():
    lsc = LocalSimilarityClassifier(dim=4, proxies=3, eta_init=1.0)
    feats = torch.randn(30, 4)
    labels = torch.tensor([0] * 15 + [1] * 15)
    lsc.imprint(feats, labels, [0, 1])
    assert lsc.proxies.shape == (6, 4) and lsc.num_classes == 2
    assert lsc(feats).shape == (30, 2)


def test_kmeans_finds_two_separated_clusters():
    x = torch.cat([torch.randn(20, 2) * 0.01 + 5, torch.randn(20, 2) * 0.01 - 5])
    centroids = kmeans(x, 2)
    assert sorted(round(float(c[0])) for c in centroids) == [-5, 5]


def test_a_scale_at_or_below_zero_cannot_zero_the_two_class_loss(digits):
    """Eq. 10 at two classes is 0 for every image once eta <= 0; the floor keeps the
    base step learning (it stayed at chance accuracy without it)."""
    scores = torch.tensor([[0.2, 0.5], [0.7, 0.1]])
    labels = torch.tensor([0, 0])
    assert nca_loss(scores, labels, torch.tensor(-0.5), 0.6).item() == 0.0  # the exploit
    eta = torch.tensor(-0.5).clamp(min=PODNetConfig().eta_min)
    assert nca_loss(scores, labels, eta, 0.6).item() == pytest.approx((0.9 + 0.0) / 2)
    (names, data), = steps_of(digits, 1)
    method = PODNet()
    bundle, _ = run_step(None, data, names, method, fast_config(epochs=3, prune_ratio=None),
                         arch="resnet_small", input_spec=digits.input_spec)
    scores = method.scores(model_of_step(bundle, 1), data.images, torch.device("cpu"))
    assert (scores.argmax(1) == data.labels).float().mean() >= 0.95  # 0.986; free eta 0.875
