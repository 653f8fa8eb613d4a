"""Killing `m2kd add-classes` at any moment leaves a bundle that loads, verifies, and is
either the old one or the new one; with --keep-previous the old one is always there."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import preloaded

from m2kd.runtime.api import Runtime
from m2kd.runtime.cli import cli
from m2kd.trainer.samples import write_samples

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"

def _slow_fsync_cli(args: list[str]) -> None:
    """The real CLI with every fsync slowed down, so kills also land inside the write."""
    real_fsync = os.fsync

    def slow_fsync(fd):
        time.sleep(0.15)
        real_fsync(fd)

    os.fsync = slow_fsync
    cli(args)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start(bundle: Path, data: Path):
    args = ["add-classes", str(bundle), "--data", str(data), "--keep-previous", "--epochs", "2",
            "--batch-size", "16", "--device", "cpu", "--no-progress"]
    return preloaded.start(_slow_fsync_cli, args)


def test_sigkill_at_many_points_leaves_old_or_new_bundle(digits, tmp_path):
    data = tmp_path / "data"
    write_samples(digits, data, 30, ["6", "7"], split="train")
    bundle = tmp_path / "bundle.safetensors"
    prev = tmp_path / "bundle.safetensors.prev"
    old = _digest(GOLDEN)

    bundle.write_bytes(GOLDEN.read_bytes())
    preloaded.warm()
    started = time.perf_counter()
    first = _start(bundle, data)
    first.join(timeout=120)
    assert first.exitcode == 0
    full_run = time.perf_counter() - started
    outcomes = set()
    for fraction in (0.05, 0.5, 0.7, 0.76, 0.82, 0.88, 0.94, 1.0):  # dense where it writes
        bundle.write_bytes(GOLDEN.read_bytes())
        prev.unlink(missing_ok=True)
        proc = _start(bundle, data)
        time.sleep(fraction * full_run)
        proc.kill()  # SIGKILL
        proc.join()
        rt = Runtime.load(bundle)  # loads, checksum and every probe verified
        if _digest(bundle) == old:
            outcomes.add("old")
        else:
            assert rt.steps == 3 and rt.classes[-2:] == ["6", "7"]
            assert _digest(prev) == old  # the old bundle is kept whenever it was replaced
            outcomes.add("new")
    assert "old" in outcomes  # the kills did interrupt runs, not only finished ones
