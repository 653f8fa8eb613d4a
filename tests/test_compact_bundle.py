"""A compact bundle: owner masks at 4 bits and probe inputs derived from a seed; exact
round trips, fewer bytes, old files read and kept as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from m2kd.runtime.bundle import bytes_by_part, load_bundle, read_metadata, save_bundle
from m2kd.runtime.errors import BundleFormatError
from m2kd.runtime.mask_packing import mask_bits_for, pack_nibbles, unpack_nibbles
from m2kd.runtime.probe_inputs import seeded_values
from m2kd.runtime.reconstruct import check_probes

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
