"""What the class statistics describe: every stage's pooled output ("stages", the default
of new bundles) or the last stage's ("last", every bundle written before)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from m2kd.runtime.backbones import BACKBONES
from m2kd.runtime.bundle import load_bundle, read_metadata, save_bundle, validate
from m2kd.runtime.class_stats import pooled_features, statistics_dim, statistics_of
from m2kd.runtime.classifier import LastStageFeCAM, scorer_of_step
from m2kd.runtime.engine import StepConfig, run_step
from m2kd.runtime.errors import BundleFormatError, ConfigError
from m2kd.runtime.m2kd import M2KD
from m2kd.runtime.reconstruct import model_of_step
from tests.conftest import assert_same_statistics, fast_config, steps_of
from tests.hostile import rewrite_bundle

GOLDEN_V2 = Path(__file__).parent / "data" / "golden-v2.safetensors"
STAGES_DIM = sum(BACKBONES["resnet_small"].widths)  # 16 + 32 + 64


def test_new_bundles_describe_every_stage_and_say_so_on_disk(three_step_bundle, tmp_path):
    bundle = three_step_bundle[-1]
    assert bundle.statistics_features == "stages" == StepConfig().stats_features
    assert statistics_dim(BACKBONES["resnet_small"].widths, "stages") == STAGES_DIM == 112
    assert all(rec.stats[space].dim == STAGES_DIM for rec in bundle.steps for space in rec.stats)
    path = tmp_path / "b.safetensors"
    save_bundle(bundle, path)
    assert read_metadata(path)["stats_features"] == "stages"
    assert load_bundle(path).statistics_features == "stages"


def test_bundles_written_before_keep_the_last_stage(tmp_path):
    old = load_bundle(GOLDEN_V2)
    assert old.statistics_features == "last"
    assert old.steps[0].stats["base"].dim == BACKBONES[old.arch].widths[-1]
    path = tmp_path / "again.safetensors"
    save_bundle(old, path)  # no key written: the file and its checksum stay as they were
    assert "stats_features" not in read_metadata(path)


@torch.no_grad()
def test_the_last_stage_block_is_the_statistics_of_the_heads_input(three_step_bundle, digits):
    """PASS draws the head's pseudo-features from this block (runtime/old_class_features.py)."""
    bundle = three_step_bundle[-1]
    (_, data), = steps_of(digits, 1)
    last = pooled_features(model_of_step(bundle, 1), data.images, "cpu", "last")
    assert_same_statistics(bundle.steps[0].stats["base"].last_dims(last.shape[1]),
                           statistics_of(last, data.labels, [0, 1]))
    stages = pooled_features(model_of_step(bundle, 1), data.images, "cpu", "stages")
    assert torch.equal(stages[:, -last.shape[1]:], last)


def test_the_base_step_fixes_the_kind_for_every_later_step(digits):
    (names1, data1), (names2, data2) = steps_of(digits, 2)
    bundle, _ = run_step(None, data1, names1, M2KD(), fast_config(epochs=1, stats_features="last"),
                         arch="resnet_small", input_spec=digits.input_spec)
    bundle, _ = run_step(bundle, data2, names2, M2KD(),
                         fast_config(epochs=1, stats_features="stages"))
    assert bundle.statistics_features == "last"
    assert {rec.stats[s].dim for rec in bundle.steps for s in rec.stats} == {64}


def test_statistics_of_another_kind_are_refused(three_step_bundle):
    wrong = copy.copy(three_step_bundle[-1])
    wrong.stats_features = "last"  # the stored statistics are 112-d
    with pytest.raises(BundleFormatError, match=r"step.1.stats.base.mean: shape \(2, 112\)"):
        validate(wrong)
    wrong.stats_features = "everything"
    with pytest.raises(BundleFormatError, match="stats_features must be one of"):
        validate(wrong)


def test_an_unknown_kind_on_disk_is_refused(tmp_path):
    bad = rewrite_bundle(GOLDEN_V2, tmp_path / "b.safetensors", stats_features="everything")
    with pytest.raises(BundleFormatError, match="stats_features"):
        load_bundle(bad, check_checksum=False)


def test_an_unknown_kind_in_the_config_is_refused():
    with pytest.raises(ConfigError, match="stats_features must be one of stages, last"):
        StepConfig(stats_features="all").validate()


def test_fecam_reads_the_last_stage_and_the_pseudo_head_every_stage(three_step_bundle):
    """FeCAM's per-class D x D matrices are what a scorer reads per image: on the last
    stage's 64 they cost what they did; the pseudo head (one row per class) takes all 112."""
    scorer = scorer_of_step(three_step_bundle[-1], 3)  # stats-base: pseudo head + base FeCAM
    fecam = scorer.classifier.own.fecam
    assert isinstance(fecam, LastStageFeCAM) and fecam.dim == 64
    assert scorer.classifier.base.weight.shape == (6, STAGES_DIM)
    x = torch.randn(3, STAGES_DIM)
    assert torch.equal(fecam(x), fecam.fecam(x[:, -64:]))
    old = load_bundle(GOLDEN_V2)
    assert not isinstance(scorer_of_step(old, 2).classifier.base, LastStageFeCAM)
