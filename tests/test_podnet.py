"""PODNet: its losses on hand-computed cases (the NCA margin really changes the loss),
its classifier across steps, and that it keeps its old classes on real data."""

from __future__ import annotations

import math

import pytest
import torch

from m2kd.runtime.engine import StepConfig, StepData, run_step
from m2kd.runtime.reconstruct import model_of_step
from m2kd.trainer.datasets import load_digits_dataset
from m2kd.trainer.orders import named_order
from m2kd.trainer.podnet import (LocalSimilarityClassifier, PODNet, PODNetConfig,
                                 balanced_subset, kmeans, nca_loss, pod_flat, pod_spatial)
from m2kd.trainer.protocol import Protocol, run_protocol
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
    floor = PODNetConfig().eta_min
    eta = torch.tensor(-0.5).clamp(min=floor)
    assert nca_loss(scores, labels, eta, 0.6).item() == pytest.approx(floor * (0.9 + 0.0) / 2)
    (names, data), = steps_of(digits, 1)
    method = PODNet(PODNetConfig(eta_init=1.0))  # a learned eta starting at 1 goes below 0
    config = fast_config(epochs=5, lr=0.1, prune_ratio=None)  # PODNet's lr
    bundle, _ = run_step(None, data, names, method, config, arch="resnet_small",
                         input_spec=digits.input_spec)
    scores = method.scores(model_of_step(bundle, 1), data.images, torch.device("cpu"))
    assert (scores.argmax(1) == data.labels).float().mean() >= 0.95  # 0.979; free eta 0.915


def _two_steps_with_exemplars(digits, config: PODNetConfig):
    """Step 1 on classes 0-1, step 2 on classes 2-3 plus 10 images of each old class."""
    (names1, first), (names2, second) = steps_of(digits, 2)
    exemplars = torch.cat([torch.nonzero(first.labels == c).flatten()[:10] for c in (0, 1)])
    second = StepData(torch.cat([second.images, first.images[exemplars]]),
                      torch.cat([second.labels, first.labels[exemplars]]))
    method = PODNet(config, reads_old_data=True)
    cfg = fast_config(epochs=2, lr=0.1, prune_ratio=None)
    bundle, _ = run_step(None, first, names1, method, cfg, arch="resnet_small",
                         input_spec=digits.input_spec)
    after_first = method.lsc.proxies.detach().clone()
    run_step(bundle, second, names2, method, cfg, arch="resnet_small",
             input_spec=digits.input_spec, snapshots=[bundle])
    return after_first, method.lsc


def test_old_proxies_stay_frozen_while_a_later_step_trains(digits):
    """Trained, old proxies were pushed away by every new image (MNIST B2: old 0.0 %)."""
    after_first, lsc = _two_steps_with_exemplars(digits, PODNetConfig(balanced_epochs=0))
    assert torch.equal(lsc.old_proxies, after_first)
    assert lsc.num_classes == 4 and lsc.proxies.requires_grad


def test_the_balanced_fine_tuning_trains_every_proxy(digits):
    after_first, lsc = _two_steps_with_exemplars(digits, PODNetConfig(balanced_epochs=2,
                                                                      balanced_updates=0))
    assert len(lsc.old_proxies) == 0 and lsc.num_classes == 4  # all proxies were thawed
    assert not torch.equal(lsc.proxies[:len(after_first)], after_first)


def test_a_small_balanced_subset_is_fine_tuned_for_more_epochs():
    method = PODNet(PODNetConfig(balanced_epochs=20, balanced_updates=200))
    assert method._balanced_epochs(80, 64) == 100  # 2 batches an epoch
    assert method._balanced_epochs(2000, 64) == 20  # 32 batches: 640 updates already


def test_balanced_subset_draws_the_rarest_class_count_of_each_class():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    keep = balanced_subset(labels, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[keep]).tolist() == [3, 3, 3]
    assert len(set(keep.tolist())) == 9


@pytest.mark.parametrize("seed", [0, 1])
def test_podnet_keeps_its_old_classes_on_digits(seed, tmp_path):
    """Digits, 2 + 2 + 2 classes, 20 exemplars per class, 8 epochs at lr 0.1, seeds 0-4
    (scratch run of this test's protocol, session 13): final top-1 93.0-96.3, old
    91.5-96.5. Before old proxies were frozen and the LSC balanced (session 12): final
    51.6-68.7, old 30.8-59.2."""
    torch.set_num_threads(2)
    data = load_digits_dataset(seed=seed)
    config = StepConfig(epochs=8, lr=0.1, batch_size=64, device="cpu", seed=seed,
                        progress=False, base_rotations=False)
    results = run_protocol(data, Protocol(2, 2, named_order(f"seed:{seed}", 10), max_steps=3),
                           "podnet", config, tmp_path, log=lambda s: None)
    final = results["steps"][-1]
    assert final["top1"] >= 0.90 and final["old"] >= 0.88, final
