"""Class statistics and the classifier built from them: exact, validated, exportable."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from m2kd.runtime.api import Runtime
from m2kd.runtime.bundle import load_bundle, read_metadata, save_bundle
from m2kd.runtime.class_stats import ClassStats, pack, pooled_features, statistics_features, \
    statistics_of, tukey, unpack, with_covariance_prior
from m2kd.runtime.classifier import COV_PRIOR, classifier_config, classifier_name, \
    describe_classifier, scorer_of_step, stats_up_to
from m2kd.runtime.errors import BundleFormatError
from m2kd.runtime.linear_from_stats import PSEUDO_PER_CLASS, LinearOnStats, covariance_factors, \
    lda_head, pseudo_feature_head, pseudo_features
from m2kd.runtime.reconstruct import check_probes, model_of_step
from m2kd.runtime.stats_classifier import VARIANCE_FLOOR, FeCAM, shrink

from tests.conftest import assert_same_statistics, steps_of

GOLDEN_V1 = Path(__file__).parent / "data" / "golden-v1.safetensors"
GOLDEN_V2 = Path(__file__).parent / "data" / "golden-v2.safetensors"
LAST_DIM = 64  # resnet_small's last stage: the head's input
GOLDEN_V2_CHECKSUM = "sha256:91c87cee582457335149e9db683153e1d541be75027037dc06463814882c5f55"


def test_pack_round_trips_a_symmetric_matrix():
    a = torch.randn(3, 5, 5)
    cov = a @ a.transpose(1, 2)
    assert pack(cov).shape == (3, 15)
    assert torch.equal(unpack(pack(cov), 5), cov)


def test_statistics_are_count_mean_and_unbiased_covariance_of_tukey_features():
    feats = torch.rand(30, 4)
    labels = torch.tensor([0] * 10 + [1] * 20)
    stats = statistics_of(feats, labels, [1, 0])
    z = tukey(feats[labels == 1].double())
    assert stats.count.tolist() == [20, 10]
    assert torch.allclose(stats.mean[0].double(), z.mean(0), atol=1e-6)
    assert torch.allclose(stats.covariances()[0].double(), torch.cov(z.T), atol=1e-6)


def test_fecam_prefers_the_class_whose_distribution_fits():
    # Two classes with the same mean direction but different spreads along each axis:
    # Mahalanobis (unlike nearest mean) uses the spread.
    g = torch.Generator().manual_seed(0)
    a = torch.rand(500, 2, generator=g) * torch.tensor([1.0, 0.05]) + 0.5
    b = torch.rand(500, 2, generator=g) * torch.tensor([0.05, 1.0]) + 0.5
    feats = torch.cat([a, b]).pow(2)  # tukey(0.5) undoes the square
    labels = torch.tensor([0] * 500 + [1] * 500)
    fecam = FeCAM(statistics_of(feats, labels, [0, 1]), beta=0.5)
    test = torch.tensor([[1.4, 0.52], [0.52, 1.4]]).pow(2)
    assert fecam(test).argmax(1).tolist() == [0, 1]


def _two_gaussians(n=400):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([1.0, 0.2, 0.5])
    b = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.2, 1.0, 0.5])
    feats = torch.cat([a, b]).clamp(min=0).pow(2)  # tukey(0.5) undoes the square
    return feats, torch.tensor([0] * n + [1] * n)


@pytest.mark.parametrize("fit", [lda_head, pseudo_feature_head])
def test_linear_heads_from_statistics_separate_two_gaussians(fit):
    feats, labels = _two_gaussians()
    head = LinearOnStats(*fit(statistics_of(feats, labels, [0, 1])), beta=0.5)
    assert (head(feats).argmax(1) == labels).float().mean() >= 0.99


def test_lda_is_the_closed_form_of_a_shared_covariance():
    stats = statistics_of(*_two_gaussians(), [0, 1])
    w, b = lda_head(stats, shrinkage=0.0)
    shared = stats.covariances().double().mean(0)  # equal counts: the plain mean
    expected = torch.linalg.solve(shared, stats.mean.double().T).T
    assert torch.allclose(w.double(), expected, rtol=1e-4)
    assert torch.allclose(b.double(), -0.5 * (expected * stats.mean.double()).sum(1), rtol=1e-4)


def test_pseudo_features_are_balanced_and_follow_the_statistics():
    stats = statistics_of(*_two_gaussians(), [0, 1])
    x, y = pseudo_features(stats, 2000, torch.Generator().manual_seed(0))
    assert y.bincount().tolist() == [2000, 2000]
    assert torch.allclose(x[y == 1].mean(0), stats.mean[1], atol=0.01)


def test_shrinkage_makes_a_singular_covariance_invertible():
    cov = torch.zeros(1, 3, 3, dtype=torch.float64)
    cov[0, 0, 0] = 1.0
    assert torch.linalg.eigvalsh(shrink(cov)).min() > 0


def test_statistics_never_go_stale(three_step_bundle, digits):
    """Base-space statistics of step 1's classes, recomputed from the snapshot rebuilt out
    of the final bundle, equal the stored ones: the snapshot is exact."""
    final = three_step_bundle[-1]
    (_, data), = steps_of(digits, 1)
    stored = final.steps[0].stats["base"]
    feats = pooled_features(model_of_step(final, 1), data.images, "cpu",
                            final.statistics_features)
    again = statistics_of(feats, data.labels, [0, 1])
    assert torch.equal(stored.count, again.count)
    assert_same_statistics(stored, again)
    assert torch.equal(three_step_bundle[0].steps[0].stats["base"].mean, stored.mean)


def test_statistics_come_from_the_new_classes_images_only(three_step_bundle, digits):
    for k, rec in enumerate(three_step_bundle[-1].steps, start=1):
        per_class = [int((digits.train_labels == int(c)).sum()) for c in rec.classes]
        assert rec.stats["base"].count.tolist() == per_class
        assert ("own" in rec.stats) == (k > 1)


def test_own_space_statistics_are_those_of_the_exact_snapshot(three_step_bundle, digits):
    """Step k's own-space statistics, recomputed in snapshot k rebuilt from the final bundle."""
    final = three_step_bundle[-1]
    for k, (_, data) in enumerate(steps_of(digits, 3)[1:], start=2):
        new = [i for i, c in enumerate(final.classes) if c in final.steps[k - 1].classes]
        feats = pooled_features(model_of_step(final, k), data.images, "cpu",
                                final.statistics_features)
        again = statistics_of(feats, data.labels, new)
        assert_same_statistics(final.steps[k - 1].stats["own"], again)


def features_of(bundle, k, x):
    """What the bundle's statistics describe, of snapshot k (runtime/class_stats.py)."""
    return statistics_features(model_of_step(bundle, k)(x), bundle.statistics_features)


def last_stage_fecam(stats, features, **kwargs):
    """FeCAM as the classifiers run it: on the last stage's block of the statistics and
    the features (the whole of `last` ones; runtime/classifier.py, LastStageFeCAM)."""
    return FeCAM(stats.last_dims(LAST_DIM), 0.5, **kwargs)(features[..., -LAST_DIM:])


def _own(bundle, x, step):
    """FeCAM of each step's classes in that step's own snapshot."""
    return torch.cat([last_stage_fecam(rec.stats["own" if k > 1 else "base"],
                                       features_of(bundle, k, x))
                      for k, rec in enumerate(bundle.steps[:step], 1)], 1)


def _base_stats(bundle, step):
    """Base-space statistics of steps 1..step, every covariance drawn towards the base
    classes' mean covariance by COV_PRIOR pseudo-observations."""
    prior = stats_up_to(bundle, 1).covariances().mean(0)
    return with_covariance_prior(stats_up_to(bundle, step), prior, COV_PRIOR)


def _by_hand(bundle, x, step):
    """`stats`: pseudo-feature head on base features + FeCAM in each own space, added
    as log-probabilities."""
    head = LinearOnStats(*pseudo_feature_head(_base_stats(bundle, step)), beta=0.5)
    base = head(features_of(bundle, 1, x))
    return base.log_softmax(1) + _own(bundle, x, step).log_softmax(1)


@torch.no_grad()
def test_runtime_predicts_with_the_statistics_classifier(three_step_bundle, digits):
    assert three_step_bundle[-1].classifier == classifier_config("stats-base")  # the default
    bundle = copy.copy(three_step_bundle[-1])
    bundle.classifier = classifier_config("stats")
    assert bundle.classifier["kind"] == "pseudo" and bundle.classifier["space"] == "base+own"
    x = digits.test_images[:16]
    expected = _by_hand(bundle, x, 3).argmax(1)
    runtime = Runtime(bundle, device="cpu")
    predicted = [p.labels[0] for p in runtime.predict(x, top_k=1)]
    assert predicted == [bundle.classes[i] for i in expected.tolist()]
    assert torch.allclose(scorer_of_step(bundle, 2)(x), _by_hand(bundle, x, 2), atol=1e-4)


@torch.no_grad()
def test_fecam_classifiers_read_the_spaces_they_name(three_step_bundle, digits):
    bundle = copy.copy(three_step_bundle[-1])
    x = digits.test_images[:16]
    base = last_stage_fecam(_base_stats(bundle, 3), features_of(bundle, 1, x), scale_classes=2)
    bundle.classifier = classifier_config("fecam-base")
    scorer = scorer_of_step(bundle, 3)
    assert len(scorer.models) == 1
    assert torch.allclose(scorer(x), base, atol=1e-5)
    bundle.classifier = classifier_config("fecam")
    scorer = scorer_of_step(bundle, 3)
    assert len(scorer.models) == 3
    assert torch.allclose(scorer(x), base + _own(bundle, x, 3), atol=1e-4)


@torch.no_grad()
def test_stats_base_adds_the_pseudo_head_and_base_fecam_in_one_pass(three_step_bundle, digits):
    bundle = copy.copy(three_step_bundle[-1])
    bundle.classifier = classifier_config("stats-base")
    x = digits.test_images[:16]
    features = features_of(bundle, 1, x)
    head = LinearOnStats(*pseudo_feature_head(_base_stats(bundle, 3)), beta=0.5)(features)
    fecam = last_stage_fecam(_base_stats(bundle, 3), features, scale_classes=2)
    scorer = scorer_of_step(bundle, 3)
    assert len(scorer.models) == 1  # the base snapshot only: a plain model's pass
    assert torch.allclose(scorer(x), head.log_softmax(1) + fecam.log_softmax(1), atol=1e-4)
    assert describe_classifier(bundle.classifier).endswith(
        "+ FeCAM in the same space (covariance prior: 16 images of the base classes' mean)")


@pytest.mark.parametrize("spec", [{"kind": "fecam", "space": "base+fecam"},
                                  {"kind": "lda", "space": "base+own"},
                                  {"kind": "pseudo", "space": "everywhere"}])
def test_a_classifier_the_metadata_cannot_describe_is_refused(three_step_bundle, spec):
    bundle = copy.copy(three_step_bundle[-1])
    bundle.classifier = dict(classifier_config("stats-base"), **spec)
    with pytest.raises(BundleFormatError, match="unknown classifier"):
        scorer_of_step(bundle, 2)


@pytest.mark.parametrize("prior", [-1.0, "16", float("nan"), float("inf"), True])
def test_a_covariance_prior_that_is_not_a_count_is_refused(three_step_bundle, prior):
    bundle = copy.copy(three_step_bundle[-1])
    bundle.classifier = dict(classifier_config("stats-base"), cov_prior=prior)
    with pytest.raises(BundleFormatError, match="cov_prior must be a number >= 0"):
        scorer_of_step(bundle, 2)


@torch.no_grad()
def test_a_bundle_can_be_served_with_another_statistics_classifier(three_step_bundle, digits):
    bundle = three_step_bundle[-1]
    runtime = Runtime(bundle, device="cpu")
    assert runtime.using_classifier(None) is runtime
    one_pass, every_snapshot = runtime.using_classifier("pseudo"), runtime.using_classifier("stats")
    assert bundle.classifier == classifier_config("stats-base")  # the loaded bundle is unchanged
    assert len(runtime.scorer(3).models) == 1 and len(one_pass.scorer(3).models) == 1
    assert len(every_snapshot.scorer(3).models) == 3
    x = digits.test_images[:16]
    alone = copy.copy(bundle)
    alone.classifier = classifier_config("pseudo")
    assert torch.allclose(one_pass.scorer(3)(x), scorer_of_step(alone, 3)(x), atol=1e-4)


@torch.no_grad()
def test_bundles_keep_the_pseudo_feature_count_they_were_written_with(three_step_bundle,
                                                                         digits):
    """Until session 18 the pseudo head drew 256 features per class; such a bundle still
    fits its head on 256, not on the new default."""
    assert classifier_config("stats-base")["per_class"] == PSEUDO_PER_CLASS == 1024
    old = copy.copy(three_step_bundle[-1])
    old.classifier = {**classifier_config("pseudo"), "per_class": 256}
    assert classifier_name(old.classifier) == "pseudo (256 pseudo-features per class)"
    assert describe_classifier(old.classifier).startswith(
        "a softmax head fitted on 256 pseudo-features per class")  # what `inspect` prints
    x, stats = digits.test_images[:16], _base_stats(old, 3)
    scores = scorer_of_step(old, 3)(x)
    for count, same in ((256, True), (1024, False)):
        by_hand = LinearOnStats(*pseudo_feature_head(stats, count), 0.5)(features_of(old, 1, x))
        assert torch.allclose(scores, by_hand, atol=1e-4) == same


def test_a_bundle_without_statistics_cannot_switch_to_them():
    runtime = Runtime(load_bundle(GOLDEN_V1), device="cpu")
    assert runtime.using_classifier("head").bundle.classifier == classifier_config("head")
    with pytest.raises(BundleFormatError, match="no class statistics"):
        runtime.using_classifier("pseudo")


def test_golden_v2_bundle_loads_verifies_and_classifies():
    bundle = load_bundle(GOLDEN_V2)
    assert read_metadata(GOLDEN_V2)["checksum"] == GOLDEN_V2_CHECKSUM
    assert bundle.checksum() == GOLDEN_V2_CHECKSUM
    assert all(c.ok for c in check_probes(bundle))
    assert bundle.classifier["kind"] == "fecam" and len(stats_up_to(bundle, 2)) == 4


def _broken(bundle, edit):
    b = copy.deepcopy(bundle)
    edit(b.steps[1].stats["base"])
    return b


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.mean.__setitem__((0, 0), float("nan")), "finite"),
    (lambda s: setattr(s, "count", torch.zeros_like(s.count)), "at least one image"),
    (lambda s: setattr(s, "cov", -s.cov), "positive semi-definite"),
    (lambda s: setattr(s, "mean", s.mean[:, :3]), "shape"),
    (lambda s: setattr(s, "count", s.count.int()), "dtype"),
])
def test_bad_statistics_are_refused_with_a_clear_error(tmp_path, edit, message):
    bad = _broken(load_bundle(GOLDEN_V2), edit)
    with pytest.raises(BundleFormatError, match=message):
        save_bundle(bad, tmp_path / "bad.safetensors")


def test_the_covariance_prior_counts_as_extra_observations():
    g = torch.Generator().manual_seed(0)
    own = torch.randn(3, 4, 4, generator=g)
    own = own @ own.transpose(1, 2)
    prior = torch.eye(4)
    stats = ClassStats(torch.tensor([1, 5, 1001]), torch.rand(3, 4), pack(own))
    drawn = with_covariance_prior(stats, prior, 16.0)
    assert torch.allclose(drawn.covariances()[0], prior)  # one image: no covariance of its own
    assert torch.allclose(drawn.covariances()[1], (4 * own[1] + 16 * prior) / 20, atol=1e-5)
    assert torch.allclose(drawn.covariances()[2], (1000 * own[2] + 16 * prior) / 1016, atol=1e-5)
    assert torch.equal(drawn.mean, stats.mean) and torch.equal(drawn.count, stats.count)
    assert with_covariance_prior(stats, prior, 0.0) is stats


@torch.no_grad()
def test_bundles_written_before_the_covariance_prior_classify_as_they_did(digits):
    """golden-v2 has no `cov_prior` key: it classifies without the prior (its scores stay
    those of the release that wrote it); choosing `fecam-base` again turns the prior on."""
    old = load_bundle(GOLDEN_V2)
    assert "cov_prior" not in old.classifier
    assert classifier_name(old.classifier) == "fecam-base (no cov_prior)"
    x = digits.test_images[:16]
    features = features_of(old, 1, x)
    unchanged = FeCAM(stats_up_to(old, 2), 0.5, scale_classes=2)(features)
    assert torch.allclose(scorer_of_step(old, 2)(x), unchanged, atol=1e-5)
    renewed = Runtime(old, device="cpu").using_classifier("fecam-base").bundle
    assert renewed.classifier["cov_prior"] == COV_PRIOR
    assert torch.allclose(scorer_of_step(renewed, 2)(x),
                          FeCAM(_base_stats(old, 2), 0.5, scale_classes=2)(features), atol=1e-5)


def test_class_stats_concat_keeps_head_order():
    a = ClassStats(torch.tensor([1]), torch.zeros(1, 2), torch.zeros(1, 3))
    b = ClassStats(torch.tensor([2]), torch.ones(1, 2), torch.ones(1, 3))
    assert ClassStats.concat([a, b]).count.tolist() == [1, 2]


@torch.no_grad()
def test_runtime_serves_folded_steps_from_a_small_lru(three_step_bundle, digits, monkeypatch):
    import m2kd.runtime.api as api

    monkeypatch.setattr(api, "CACHED_STEPS", 2)
    bundle = three_step_bundle[-1]
    runtime = Runtime(bundle, device="cpu")
    x = digits.test_images[:16]
    for step in (1, 2, 1, 3):
        scores = runtime.scorer(step)(x)
        assert torch.allclose(scores, scorer_of_step(bundle, step)(x), atol=1e-4)
        assert scores.argmax(1).tolist() == scorer_of_step(bundle, step)(x).argmax(1).tolist()
    assert list(runtime._models) == [1, 3]  # 2 was least recently used
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runtime.scorer(3).modules())
    assert runtime.scorer(3) is runtime.scorer(3)  # rebuilt once, then cached


def test_pseudo_features_survive_a_covariance_rounded_below_semi_definite():
    """Statistics stored at 16 bits can leave a rank-deficient covariance a hair below
    PSD, where Cholesky fails; the factor then comes from the clamped eigenvalues."""
    v = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64))[0]
    bad = v @ torch.diag(torch.tensor([2.0, 1.0, 0.0, -1e-3], dtype=torch.float64)) @ v.T
    good = torch.eye(4, dtype=torch.float64)
    factors = covariance_factors(torch.stack([good, bad]))
    assert torch.equal(factors[0], torch.linalg.cholesky(good + VARIANCE_FLOOR * good))
    clamped = v @ torch.diag(torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64)) @ v.T
    assert torch.allclose(factors[1] @ factors[1].T, clamped, atol=1e-5)
