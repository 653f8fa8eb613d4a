"""Training under torchrun with DistributedDataParallel (gloo, 2 CPU processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from m2kd.runtime.bundle import load_bundle
from m2kd.runtime.class_stats import statistics_of
from m2kd.runtime.reconstruct import check_probes

from tests.conftest import assert_same_statistics

WORKER = Path(__file__).parent / "ddp_worker.py"


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun(str(WORKER), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_a_ddp_run_writes_one_bundle_that_verifies(ddp_run):
    out, ranks = ddp_run
    assert [r["world"] for r in ranks] == [2, 2]
    bundle = load_bundle(out / "bundle.safetensors")
    assert bundle.num_steps == 2 and all(c.ok for c in check_probes(bundle))
    assert json.loads((out / "results.json").read_text())["steps"][-1]["top1"] > 0.5


def test_ranks_hold_identical_masks_weights_and_statistics(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0["masks"] == r1["masks"] and r0["weights"] == r1["weights"]
    assert r0["stats"] == r1["stats"]


def test_statistics_reduced_across_ranks_equal_one_process(ddp_run):
    """The statistics of the DDP run, recomputed in one process from all the step's
    images in the same snapshot, agree up to their 16-bit rounding."""
    from m2kd.runtime.class_stats import pooled_features
    from m2kd.runtime.reconstruct import model_of_step
    from m2kd.trainer.datasets import class_order, load_digits_dataset
    from m2kd.trainer.protocol import step_data

    out, _ = ddp_run
    bundle = load_bundle(out / "bundle.safetensors")
    data, order = load_digits_dataset(0), class_order(10, 0)
    head = {c: i for i, c in enumerate(order)}
    for k, (lo, hi) in enumerate([(0, 6), (6, 8)], start=1):
        new = step_data(data.train_images, data.train_labels, order[lo:hi], head)
        feats = pooled_features(model_of_step(bundle, 1), new.images, "cpu",
                                bundle.statistics_features)
        again = statistics_of(feats, new.labels, list(range(lo, hi)))
        assert_same_statistics(bundle.steps[k - 1].stats["base"], again)


def test_a_failing_rank_fails_the_run_and_leaves_no_bundle(tmp_path):
    result = torchrun(str(WORKER), str(tmp_path), "1")
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr
    assert not (tmp_path / "bundle.safetensors").exists()
    assert not list(tmp_path.glob(".*.tmp"))
