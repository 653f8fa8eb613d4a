"""Invariant 1: once a step owns a weight, no later step changes it by a single bit."""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime import engine
from m2kd.runtime.engine import run_step
from m2kd.runtime.errors import InvariantError
from m2kd.runtime.m2kd import M2KD
from tests.conftest import fast_config, steps_of


def _run(digits, n_steps, **config):
    bundle, history = None, []
    for names, data in steps_of(digits, n_steps):
        bundle, _ = run_step(bundle, data, names, M2KD(), fast_config(**config),
                             arch="resnet_small", input_spec=digits.input_spec)
        history.append(bundle)
    return history


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-2)])
def test_owned_weights_are_bit_identical_after_later_steps(digits, momentum, weight_decay):
    # Weight decay in every step, large enough to move any weight it touches: the classic
    # PackNet leak (decay and momentum applied to frozen weights) must not happen.
    history = _run(digits, 3, momentum=momentum, weight_decay=weight_decay,
                   later_weight_decay=weight_decay)
    for k, earlier in enumerate(history[:-1], start=1):
        later = history[-1]
        for name, w in earlier.weights.items():
            owned = (earlier.masks[name] >= 1) & (earlier.masks[name] <= k)
            assert owned.any()
            assert torch.equal(later.masks[name][owned], earlier.masks[name][owned])
            assert torch.equal(later.weights[name][owned], w[owned]), name


def test_later_steps_do_train_their_free_weights(digits):
    history = _run(digits, 2)
    first, second = history
    grew = [(second.masks[n] == 2).sum() > 0 for n in first.weights]
    assert all(grew)


def test_engine_guard_catches_a_leaking_optimizer(digits, monkeypatch):
    # If gradients of owned weights were not masked, the engine must refuse the step.
    monkeypatch.setattr(engine, "_mask_gradients", lambda params, masks, wd: None)
    with pytest.raises(InvariantError):
        _run(digits, 2, momentum=0.9)
