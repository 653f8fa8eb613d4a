"""A trained bundle's last step as if its classes had been added from a few images each.

The default classifier reads only base-snapshot statistics, so what a class learned
from N images looks like to it is fully described by base-space statistics computed
from N of its images: `few_image_bundle` recomputes those of the last step's classes
from N random training images each, without training anything again. It measures
(benchmarks/learning_floors.py --few-images) and guards (tests/test_learning.py) how
the statistics classifier copes with classes that bring little data;
benchmarks/few_images.py measures the same end to end with `add-classes`.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from m2kd.runtime.bundle import Bundle
from m2kd.runtime.class_stats import pooled_features, statistics_of
from m2kd.runtime.classifier import scorer_of_step
from m2kd.runtime.reconstruct import model_of_step

from .datasets import Dataset
from .metrics import step_metrics


def few_image_bundle(bundle: Bundle, data: Dataset, order: list[int], n: int,
                     seed: int) -> Bundle:
    """`bundle` with the base-space statistics of its last step's classes computed from
    `n` random training images each (`order`: original class ids in head order)."""
    last = order[len(bundle.classes) - len(bundle.steps[-1].classes):len(bundle.classes)]
    picked = torch.cat(list(draw_per_class(data.train_labels, last, n, seed).values()))
    head = {c: i for i, c in enumerate(order)}
    labels = torch.tensor([head[int(c)] for c in data.train_labels[picked]])
    features = pooled_features(model_of_step(bundle, 1), data.train_images[picked], "cpu",
                               bundle.statistics_features)
    stats = statistics_of(features, labels, [head[c] for c in last])
    record = bundle.steps[-1]
    steps = [*bundle.steps[:-1], replace(record, stats={**record.stats, "base": stats})]
    return replace(bundle, steps=steps)


def draw_per_class(labels: torch.Tensor, classes: list[int], n: int,
                   seed: int) -> dict[int, torch.Tensor]:
    """`n` random indices of each class in `classes` (in that order, one generator)."""
    generator = torch.Generator().manual_seed(seed)
    picked = {}
    for c in classes:
        where = torch.nonzero(labels == c).flatten()
        picked[c] = where[torch.randperm(len(where), generator=generator)[:n]]
    return picked


def with_cov_prior(bundle: Bundle, strength: float) -> Bundle:
    """`bundle` classifying with another covariance prior (0: none)."""
    return replace(bundle, classifier=dict(bundle.classifier, cov_prior=float(strength)))


@torch.no_grad()
def old_new_accuracy(bundle: Bundle, data: Dataset, order: list[int]) -> tuple[float, float]:
    """Test top-1 of `bundle`'s classifier on the classes before its last step (old) and
    on the last step's (new); `order`: original class ids in head order."""
    head = {c: i for i, c in enumerate(order)}
    seen = torch.isin(data.test_labels, torch.tensor(order[:len(bundle.classes)]))
    truth = torch.tensor([head[int(c)] for c in data.test_labels[seen]])
    logits = scorer_of_step(bundle, None)(data.test_images[seen])
    metrics = step_metrics(logits, truth, bundle.step_of_class())
    return metrics["old"], metrics["new"]
