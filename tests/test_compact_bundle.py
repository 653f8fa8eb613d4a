"""A compact bundle: owner masks at 4 bits and deflated, step parts at 16 bits, probe
inputs derived from a seed; exact round trips, fewer bytes, old files read and kept as
they were."""

from __future__ import annotations

import copy
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from m2kd.runtime.bundle import bytes_by_part, load_bundle, read_metadata, save_bundle
from m2kd.runtime.class_stats import ClassStats, pack, statistics_of
from m2kd.runtime.errors import BundleFormatError
from m2kd.runtime.mask_packing import (decode_mask, encode_mask, mask_bits_for, pack_nibbles,
                                      unpack_nibbles)
from m2kd.runtime.probe_inputs import seeded_values
from m2kd.runtime.reconstruct import check_probes
from m2kd.runtime.step_precision import narrowed, round_in_place

from tests.hostile import rewrite_bundle

GOLDEN_V2 = Path(__file__).parent / "data" / "golden-v2.safetensors"
SEED0_FIRST_VALUES = [-1.3231334686279297, -1.344893455505371, 0.3672195076942444,
                      -1.7310137748718262]


@pytest.mark.parametrize("shape", [(1,), (7,), (4, 3, 3, 3), (5, 5)])
def test_nibbles_round_trip_every_owner(shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 16, shape, dtype=torch.uint8, generator=g)
    packed = pack_nibbles(mask)
    assert packed.shape == ((mask.numel() + 1) // 2,)
    assert torch.equal(unpack_nibbles(packed, mask.shape, "m"), mask)


def test_a_wrong_packed_length_is_a_format_error():
    with pytest.raises(BundleFormatError, match="must be uint8 of shape \\(3,\\)"):
        unpack_nibbles(torch.zeros(4, dtype=torch.uint8), torch.Size([5]), "mask.x")


def test_masks_widen_to_a_byte_after_15_steps():
    assert [mask_bits_for(k) for k in (1, 15, 16, 255)] == [4, 4, 8, 8]


def test_a_new_bundle_stores_half_byte_masks_and_loads_them_exactly(tmp_path):
    old = load_bundle(GOLDEN_V2)  # written with one byte per owner
    assert old.mask_bits == 8
    fresh = load_bundle(GOLDEN_V2)
    fresh.mask_bits = None  # as the engine makes it: the most compact form
    path = tmp_path / "packed.safetensors"
    checksum = save_bundle(fresh, path)
    with safe_open(path, "pt") as f:
        assert f.metadata()["mask_bits"] == "4"
        name = next(k for k in f.keys() if k.startswith("mask."))
        assert f.get_tensor(name).dim() == 1
    again = load_bundle(path)
    assert again.checksum() == checksum
    assert all(torch.equal(again.masks[n], old.masks[n]) for n in old.masks)
    assert bytes_by_part(again)["masks"] * 2 <= bytes_by_part(old)["masks"] + len(old.masks)


def test_an_unknown_mask_width_is_refused(tmp_path):
    bad = rewrite_bundle(GOLDEN_V2, tmp_path / "b.safetensors", mask_bits="3")
    with pytest.raises(BundleFormatError, match="mask_bits"):
        load_bundle(bad, check_checksum=False)


def test_probe_values_never_change_with_the_library():
    """The derivation is the format: these numbers are SHA-256 of 'm2kd-probe:0:0'."""
    values = seeded_values(0, 4).tolist()
    assert values == pytest.approx(SEED0_FIRST_VALUES, abs=1e-7)
    assert seeded_values(0, 4).dtype == np.float32 and (np.abs(seeded_values(0, 999)) <= 2).all()


def test_new_bundles_derive_probe_inputs_instead_of_storing_them(three_step_bundle, tmp_path):
    path = tmp_path / "b.safetensors"
    save_bundle(three_step_bundle[-1], path)
    with safe_open(path, "pt") as f:
        assert f.metadata()["probe_seed"] == "0"
        assert not [k for k in f.keys() if k.endswith("probe.input")]
    loaded = load_bundle(path)
    assert all(c.ok for c in check_probes(loaded))
    old = load_bundle(GOLDEN_V2)  # stored torch.randn probes: kept as stored
    assert "probe_seed" not in read_metadata(GOLDEN_V2)
    assert all(c.ok for c in check_probes(old))


def test_an_unknown_probe_seed_is_refused(tmp_path, three_step_bundle):
    path = tmp_path / "b.safetensors"
    save_bundle(three_step_bundle[-1], path)
    bad = rewrite_bundle(path, tmp_path / "c.safetensors", probe_seed="7")
    with pytest.raises(BundleFormatError, match="probe_seed"):
        load_bundle(bad, check_checksum=False)


# ------------------------------------------------- 16-bit step parts, deflated masks


def test_step_parts_are_stored_at_16_bits_and_the_rebuild_stays_exact(three_step_bundle,
                                                                       tmp_path):
    """The engine rounds a step's BatchNorm, heads and statistics before anything reads
    them, so the file narrows them losslessly and every probe still matches."""
    path = tmp_path / "b.safetensors"
    save_bundle(three_step_bundle[-1], path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert meta["step_dtype"] == "float16" and meta["mask_coding"] == "sorted-deflate"
    private = [k for k in dtypes if k.startswith("step.") and ".probe." not in k
               and not k.endswith(".count")]
    assert private and all(dtypes[k] == torch.float16 for k in private)
    assert all(dtypes[k] == torch.float32 for k in dtypes if k.startswith("backbone."))
    loaded = load_bundle(path)
    assert all(c.ok and c.max_abs_diff <= 1e-5 for c in check_probes(loaded))
    original = three_step_bundle[-1]
    for rec, again in zip(original.steps, loaded.steps):
        assert all(torch.equal(rec.batchnorm[n], again.batchnorm[n]) for n in rec.batchnorm)
        assert torch.equal(rec.head["weight"], again.head["weight"])
        assert torch.equal(rec.stats["base"].cov, again.stats["base"].cov)
    assert all(torch.equal(loaded.masks[n], original.masks[n]) for n in original.masks)


def test_16_bit_parts_and_deflate_halve_what_a_bundle_adds(three_step_bundle):
    bundle = three_step_bundle[-1]
    wide = bytes_by_part(replace(copy.copy(bundle), mask_coding="raw", step_dtype="float32"))
    deflated = bytes_by_part(replace(copy.copy(bundle), mask_coding="deflate"))
    compact = bytes_by_part(bundle)
    for part in ("batchnorm", "heads"):
        assert compact[part] * 2 == wide[part]
    assert compact["statistics"] * 2 < wide["statistics"] * 1.01  # counts stay int64
    assert compact["masks"] < deflated["masks"] < wide["masks"]
    assert compact["weights"] == wide["weights"]


def test_an_old_bundle_keeps_its_32_bit_form_when_saved_again(tmp_path):
    old = load_bundle(GOLDEN_V2)
    assert (old.mask_coding, old.step_dtype) == ("raw", "float32")
    path = tmp_path / "again.safetensors"
    assert save_bundle(old, path) == read_metadata(GOLDEN_V2)["checksum"]


def test_round_in_place_leaves_values_beyond_float16_alone():
    t = torch.tensor([1.0 + 2 ** -20, 3.0])
    round_in_place(t)
    assert t.tolist() == [1.0, 3.0]
    big = torch.tensor([1e6, 1.0 + 2 ** -20])
    round_in_place(big)
    assert big.tolist() == [1e6, 1.0 + 2 ** -20]  # stays float32 on disk, unrounded
    assert narrowed(big).dtype == torch.float32 and narrowed(t).dtype == torch.float16


@pytest.mark.parametrize("key,value", [("mask_coding", "lzma"), ("step_dtype", "bfloat16")])
def test_an_unknown_stored_form_is_refused(tmp_path, key, value):
    bad = rewrite_bundle(GOLDEN_V2, tmp_path / "b.safetensors", **{key: value})
    with pytest.raises(BundleFormatError, match=key):
        load_bundle(bad, check_checksum=False)


def _with_first_mask(stream: bytes):
    def edit(tensors):
        name = sorted(k for k in tensors if k.startswith("mask."))[0]
        tensors[name] = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    return edit


@pytest.mark.parametrize("stream,message", [
    (b"not a zlib stream", "corrupt"),
    (zlib.compress(b"\x00" * 50_000_000), "exactly"),  # a 50 MB bomb in ~50 KB
    (zlib.compress(b"\x00" * 3), "exactly"),
])
def test_a_bad_deflated_mask_is_a_format_error(three_step_bundle, tmp_path, stream, message):
    path = tmp_path / "b.safetensors"
    save_bundle(three_step_bundle[-1], path)
    bad = rewrite_bundle(path, tmp_path / "c.safetensors", _with_first_mask(stream))
    with pytest.raises(BundleFormatError, match=message):
        load_bundle(bad, check_checksum=False)


def test_a_class_with_two_images_keeps_its_16_bit_covariance(three_step_bundle, tmp_path):
    """Rank 1 in D dimensions, with small features (covariance entries in float16's
    subnormal range): rounding moves its zero eigenvalues below zero, within the bound
    the reader allows for 16-bit values; a real negative eigenvalue is still refused."""
    bundle = copy.deepcopy(three_step_bundle[-1])
    stats = bundle.steps[0].stats["base"]
    g = torch.Generator().manual_seed(0)
    features = torch.rand(2 * len(stats), stats.dim, generator=g) * 3e-6  # tukey: sqrt
    two = statistics_of(features, torch.arange(len(stats)).repeat(2), list(range(len(stats))))
    for t in (two.mean, two.cov):
        round_in_place(t)
    eig = torch.linalg.eigvalsh(two.covariances().double())
    assert (eig.amin(1) / eig.amax(1)).min() < -1e-4  # beyond the float32 reader's slack
    bundle.steps[0].stats["base"] = two
    save_bundle(bundle, tmp_path / "ok.safetensors")
    cov = two.covariances().clone()
    cov[0] = -cov[0]  # eigenvalue -lambda_max: no rounding does that
    bundle.steps[0].stats["base"] = ClassStats(two.count, two.mean, pack(cov.double()).float())
    with pytest.raises(BundleFormatError, match="positive semi-definite"):
        save_bundle(bundle, tmp_path / "bad.safetensors")


def test_a_32_bit_covariance_gets_only_the_32_bit_slack(three_step_bundle, tmp_path):
    """The 16-bit rounding bound is for 16-bit values: a float32 covariance (a v1 file, or
    values float16 cannot hold) with an eigenvalue at -1e-3 of the largest is refused."""
    bundle = copy.deepcopy(three_step_bundle[-1])
    stats = bundle.steps[0].stats["base"]
    cov = stats.covariances().double()
    eig = torch.linalg.eigvalsh(cov)
    shift = eig.amin(1) + 1e-3 * eig.amax(1)  # smallest eigenvalue -> -1e-3 x largest
    packed = pack(cov - shift[:, None, None] * torch.eye(stats.dim, dtype=cov.dtype)).float()
    assert narrowed(packed) is packed  # float16 cannot hold these values exactly
    bundle.steps[0].stats["base"] = ClassStats(stats.count, stats.mean, packed)
    with pytest.raises(BundleFormatError, match="positive semi-definite"):
        save_bundle(bundle, tmp_path / "bad.safetensors")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("coding", ["raw", "deflate", "sorted-deflate"])
def test_every_mask_coding_round_trips_with_tied_magnitudes(bits, coding):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, 3, 3, generator=g)
    mask = torch.randint(0, 16, weight.shape, dtype=torch.uint8, generator=g)
    weight[mask == 0] = 0.0  # free weights: all tied at 0
    weight[0, 0, 0, :2] = torch.tensor([0.5, -0.5])  # |w| ties of opposite sign
    stored = encode_mask(mask, weight, bits, coding)
    assert torch.equal(decode_mask(stored, weight, bits, coding, "m"), mask)


def test_a_sorted_mask_needs_finite_weights():
    weight = torch.tensor([1.0, float("nan"), 0.0])
    stored = encode_mask(torch.tensor([1, 2, 0], dtype=torch.uint8), weight, 4,
                         "sorted-deflate")
    with pytest.raises(BundleFormatError, match="non-finite"):
        decode_mask(stored, weight, 4, "sorted-deflate", "mask.x")
