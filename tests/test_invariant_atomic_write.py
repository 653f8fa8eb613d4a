"""Invariant 4: a kill at any moment of a bundle write leaves the old or the new bundle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m2kd.runtime.bundle import load_bundle, read_metadata

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"

WRITER = """
import sys, copy
from m2kd.runtime.bundle import load_bundle, save_bundle
a = load_bundle(sys.argv[1])
b = copy.deepcopy(a)
b.steps[-1].classes = ["x", "y"]
target = sys.argv[2]
print("ready", flush=True)
i = 0
while True:
    save_bundle(a if i % 2 else b, target)
    i += 1
"""


def test_sigkill_during_writes_leaves_a_loadable_bundle(tmp_path):
    target = tmp_path / "bundle.safetensors"
    target.write_bytes(GOLDEN.read_bytes())
    # the old file (v1, its own checksum) or the new one (re-saved as v2)
    valid = {read_metadata(GOLDEN)["checksum"], load_bundle(GOLDEN).checksum()}
    import copy
    b = copy.deepcopy(load_bundle(GOLDEN))
    b.steps[-1].classes = ["x", "y"]
    valid.add(b.checksum())
    delays = [0.0, 0.003, 0.01, 0.02, 0.05, 0.08, 0.13, 0.2]
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(GOLDEN), str(target)],
                                stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
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
    from m2kd.runtime.bundle import save_bundle

    with pytest.raises(OSError):
        save_bundle(bundle, target)
    assert target.read_bytes() == GOLDEN.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.safetensors"]


def _boom(*args, **kwargs):
    raise OSError("disk full")
