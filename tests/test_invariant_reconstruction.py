"""Invariant 2: the model of step k rebuilt after later steps gives step k's outputs."""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime.reconstruct import PROBE_TOLERANCE, check_probes, model_of_step


def test_every_step_reconstructs_from_the_final_bundle(three_step_bundle):
    final = three_step_bundle[-1]
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for k, at_step_end in enumerate(three_step_bundle, start=1):
        expected = model_of_step(at_step_end, k)(x)
        rebuilt = model_of_step(final, k)(x)
        assert (expected.logits - rebuilt.logits).abs().max() <= PROBE_TOLERANCE
        assert (expected.aux_logits - rebuilt.aux_logits).abs().max() <= PROBE_TOLERANCE


def test_stored_probes_match_the_live_models(three_step_bundle):
    # Probe logits were computed by the live model at the end of each step.
    checks = check_probes(three_step_bundle[-1])
    assert [c.step for c in checks] == [1, 2, 3]
    assert all(c.ok for c in checks), checks


def test_a_changed_weight_fails_the_probe_of_its_step(three_step_bundle):
    import copy

    bundle = copy.deepcopy(three_step_bundle[-1])
    name = next(iter(bundle.weights))
    owned_by_2 = bundle.masks[name] == 2
    bundle.weights[name][owned_by_2] += 0.5
    checks = {c.step: c.ok for c in check_probes(bundle)}
    assert checks == {1: True, 2: False, 3: False}


def test_unknown_step_is_refused(three_step_bundle):
    from m2kd.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="steps 1..3"):
        model_of_step(three_step_bundle[-1], 4)
