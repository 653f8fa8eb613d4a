"""Shared fixtures: tiny real data (scikit-learn digits) and a 3-step bundle."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from m2kd.runtime.engine import StepConfig
from m2kd.trainer.datasets import class_order, load_digits_dataset
from m2kd.trainer.protocol import Protocol, step_data

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_rng():
    """Each test sees the same RNG state and leaves none behind."""
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


@pytest.fixture(scope="session")
def digits():
    return load_digits_dataset(seed=0)


def fast_config(**overrides) -> StepConfig:
    """Few epochs, no rotation classes in the base step (tests/test_base_rotations.py)."""
    base = dict(epochs=2, lr=0.5, batch_size=64, augment="flip", base_rotations=False,
                device="cpu", progress=False)
    base.update(overrides)
    return StepConfig(**base)


def steps_of(dataset, n_steps: int, per_step: int = 2):
    """Per step: (class names, StepData with head-index labels), natural class order."""
    protocol = Protocol(per_step, per_step, class_order(dataset.num_classes, 0))
    head_index = {c: i for i, c in enumerate(protocol.order)}
    out = []
    for classes in protocol.steps()[:n_steps]:
        data = step_data(dataset.train_images, dataset.train_labels, classes, head_index)
        out.append(([dataset.class_names[c] for c in classes], data))
    return out


@pytest.fixture(scope="session")
def three_step_bundle(digits):
    """A real 3-step M2KD bundle on digits, plus every intermediate bundle."""
    from m2kd.runtime.engine import run_step
    from m2kd.runtime.m2kd import M2KD

    bundles, bundle = [], None
    for names, data in steps_of(digits, 3):
        bundle, _ = run_step(bundle, data, names, M2KD(), fast_config(),
                             arch="resnet_small", input_spec=digits.input_spec)
        bundles.append(bundle)
    return bundles


@pytest.fixture()
def step_labels(monkeypatch):
    """Records the sorted label set of every step the protocol hands to the engine."""
    from m2kd.trainer import protocol as protocol_module

    seen: list[list[int]] = []
    real = protocol_module.run_step

    def spy(previous, data, names, method, config, **kw):
        seen.append(sorted(set(data.labels.tolist())))
        return real(previous, data, names, method, config, **kw)

    monkeypatch.setattr(protocol_module, "run_step", spy)
    return seen


def assert_same_statistics(stored, again):
    """Equal up to the float16 rounding they are stored with (runtime/step_precision.py)."""
    half_ulp = 2.0 ** -11
    assert torch.equal(stored.count, again.count)
    assert torch.allclose(stored.mean, again.mean, rtol=half_ulp, atol=1e-5)
    assert torch.allclose(stored.cov, again.cov, rtol=half_ulp, atol=1e-5)


@pytest.fixture
def trained_batches(monkeypatch):
    """Every batch the engine trains on from now on, in order."""
    from m2kd.runtime import engine

    batches = []
    real = engine._batches

    def recording(ctx, generator):
        for batch in real(ctx, generator):
            batches.append(batch)
            yield batch

    monkeypatch.setattr(engine, "_batches", recording)
    return batches
