"""Invariant 5: loading is safe. Bad files are refused with a specific error; nothing
on the load path unpickles; the v1 golden bundle keeps loading."""

from __future__ import annotations

import copy
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from m2kd.runtime.bundle import load_bundle, read_metadata, save_bundle
from m2kd.runtime.errors import (BundleError, BundleFormatError, BundleIntegrityError,
                                 BundleVersionError)
from m2kd.runtime.reconstruct import check_probes

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"
GOLDEN_CHECKSUM = "sha256:4d105d7614c4ae4187e33c410c71017a775cd58994210241836e63d102d04d73"


def test_golden_v1_bundle_keeps_loading_and_verifying(tmp_path):
    bundle = load_bundle(GOLDEN)  # checks the v1 checksum against the v1 content
    assert read_metadata(GOLDEN)["checksum"] == GOLDEN_CHECKSUM
    assert bundle.num_steps == 2 and bundle.classes == ["0", "1", "2", "3"]
    assert all(c.ok for c in check_probes(bundle))
    # v1 has no class statistics: it classifies with its head, and is re-saved as v2.
    assert bundle.classifier == {"kind": "head"} and not bundle.steps[0].stats
    save_bundle(bundle, tmp_path / "v2.safetensors")
    assert read_metadata(tmp_path / "v2.safetensors")["format_version"] == "2"
    assert load_bundle(tmp_path / "v2.safetensors").checksum() == bundle.checksum()


def test_save_then_load_round_trips(three_step_bundle, tmp_path):
    path = tmp_path / "b.safetensors"
    written = save_bundle(three_step_bundle[-1], path)
    loaded = load_bundle(path)
    assert loaded.checksum() == written
    assert loaded.classes == three_step_bundle[-1].classes


def _raw(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _rewrite(tmp_path, edit) -> Path:
    tensors, metadata = _raw(GOLDEN)
    edit(tensors, metadata)
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return out


def _offset_of(data: bytes, name: str) -> int:
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    return 8 + header_len + header[name]["data_offsets"][0]


def test_flipped_bit_in_a_weight_is_an_integrity_error(tmp_path):
    data = bytearray(GOLDEN.read_bytes())
    data[_offset_of(bytes(data), "step.2.head.bias")] ^= 0x01  # lowest mantissa bit
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="checksum"):
        load_bundle(bad)


@pytest.mark.parametrize("keep", [0, 7, 100, 5000, -1000])
def test_truncated_file_is_a_format_error(tmp_path, keep):
    data = GOLDEN.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(BundleFormatError):
        load_bundle(bad)


def test_wrong_version_is_a_version_error(tmp_path):
    bad = _rewrite(tmp_path, lambda t, m: m.update(format_version="3"))
    with pytest.raises(BundleVersionError, match="'3'"):
        load_bundle(bad)


def test_not_a_bundle_is_a_format_error(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(BundleFormatError, match="not an m2kd bundle"):
        load_bundle(other)


def test_wrong_shape_is_a_format_error(tmp_path):
    def edit(t, m):
        t["step.2.head.weight"] = torch.zeros(5, 64)

    with pytest.raises(BundleFormatError, match=r"step.2.head.weight: shape \(5, 64\)"):
        load_bundle(_rewrite(tmp_path, edit))


def test_out_of_range_mask_is_a_format_error(tmp_path):
    def edit(t, m):
        name = next(k for k in t if k.startswith("mask."))
        t[name] = t[name].clone()
        t[name].view(-1)[0] = 9

    with pytest.raises(BundleFormatError, match="owner 9 is out of range"):
        load_bundle(_rewrite(tmp_path, edit))


def test_wrong_mask_dtype_is_a_format_error(tmp_path):
    def edit(t, m):
        name = next(k for k in t if k.startswith("mask."))
        t[name] = t[name].to(torch.int32)

    with pytest.raises(BundleFormatError, match="dtype"):
        load_bundle(_rewrite(tmp_path, edit))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    with pytest.raises(BundleFormatError, match="lacks tensor 'step.1.probe.logits'"):
        load_bundle(_rewrite(tmp_path, lambda t, m: t.pop("step.1.probe.logits")))
    with pytest.raises(BundleFormatError, match="unexpected tensors: extra"):
        load_bundle(_rewrite(tmp_path, lambda t, m: t.update(extra=torch.zeros(1))))


def test_steps_beyond_the_class_list_are_refused(tmp_path):
    def edit(t, m):
        m["classes"] = json.dumps(json.loads(m["classes"])[:1])

    with pytest.raises(BundleFormatError):
        load_bundle(_rewrite(tmp_path, edit))


def test_header_claiming_huge_length_is_a_format_error(tmp_path):
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(BundleFormatError):
        load_bundle(bad)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(BundleError, match="no such bundle file"):
        load_bundle(tmp_path / "nope.safetensors")


def test_load_path_never_unpickles(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("unpickling on the load path")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    bundle = load_bundle(GOLDEN)
    check_probes(bundle)


def test_no_pickle_or_torch_load_in_runtime_sources():
    root = Path(__file__).parents[1]
    for folder in ("runtime", "export"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            assert "import pickle" not in text and "torch.load(" not in text, path


def test_save_refuses_an_invalid_bundle(three_step_bundle, tmp_path):
    bundle = copy.deepcopy(three_step_bundle[-1])
    bundle.steps[0].classes = []
    with pytest.raises(BundleFormatError):
        save_bundle(bundle, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())
