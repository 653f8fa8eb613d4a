"""Invariant 4: a kill at any moment of a bundle write leaves the old or the new bundle."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import preloaded
import pytest

from m2kd.runtime.bundle import load_bundle, read_metadata, save_bundle

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"

def _write_forever(golden: str, target: str, ready) -> None:
    """Saves two different bundles to target in turn until killed."""
    a = load_bundle(golden)
    b = _renamed(a)
    ready.set()
    i = 0
    while True:
        save_bundle(a if i % 2 else b, target)
        i += 1


def _renamed(bundle):
    other = copy.deepcopy(bundle)
    other.steps[-1].classes = ["x", "y"]
    return other


def test_sigkill_during_writes_leaves_a_loadable_bundle(tmp_path):
    target = tmp_path / "bundle.safetensors"
    target.write_bytes(GOLDEN.read_bytes())
    # the old file (v1, its own checksum) or the new one (re-saved as v2)
    valid = {read_metadata(GOLDEN)["checksum"], load_bundle(GOLDEN).checksum(),
             _renamed(load_bundle(GOLDEN)).checksum()}
    delays = [0.0, 0.003, 0.01, 0.02, 0.05, 0.08, 0.13, 0.2]
    for delay in delays:
        ready = preloaded.event()
        proc = preloaded.start(_write_forever, str(GOLDEN), str(target), ready)
        assert ready.wait(timeout=60)
        time.sleep(delay)
        proc.kill()  # SIGKILL
        proc.join()
        loaded = load_bundle(target)  # raises if the file is broken
        assert read_metadata(target)["checksum"] in valid
        assert loaded.checksum() in valid


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_a_failing_write_keeps_the_old_file_and_no_temp_files(tmp_path, monkeypatch, fail_at):
    from m2kd.runtime import atomic

    target = tmp_path / "bundle.safetensors"
    target.write_bytes(GOLDEN.read_bytes())
    bundle = load_bundle(GOLDEN)
    if fail_at == "replace":
        monkeypatch.setattr(atomic.os, "replace", _boom)
    else:
        monkeypatch.setattr(atomic.os, "fsync", _boom)
    with pytest.raises(OSError):
        save_bundle(bundle, target)
    assert target.read_bytes() == GOLDEN.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.safetensors"]


def _boom(*args, **kwargs):
    raise OSError("disk full")
