"""Hostile input costs no memory, no 500 and no wrong answer (issue 10)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from m2kd.runtime.bundle import InputSpec
from m2kd.runtime.images import ImageTooLarge, load_image

from tests.hostile import png_bomb

SPEC = InputSpec(1, 8, 8, (0.5,), (0.5,))

# Peak RSS growth (MB) of a fresh process decoding `path` with `max_pixels`.
_PEAK_GROWTH = textwrap.dedent("""
    import resource, sys
    from m2kd.runtime.bundle import InputSpec
    from m2kd.runtime.images import load_image
    from m2kd.runtime.errors import DataError
    spec = InputSpec(1, 8, 8, (0.5,), (0.5,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_image(sys.argv[1], spec, int(sys.argv[2]))
    except DataError:
        pass
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def _peak_growth_mb(path, max_pixels: int) -> float:
    out = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, str(path), str(max_pixels)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_pixel_bomb_is_refused_before_decoding_with_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(9000, 9000))  # 0.2 MB file, 243 MB decoded
    with pytest.raises(ImageTooLarge, match="9000x9000 pixels is over the limit"):
        load_image(bomb, SPEC)
    assert _peak_growth_mb(bomb, 4096 * 4096) < 30
    assert _peak_growth_mb(bomb, 10**9) > 200  # the same file, decoded: what the limit saves


def test_an_image_within_the_limit_still_decodes(tmp_path):
    ok = tmp_path / "ok.png"
    ok.write_bytes(png_bomb(64, 48))
    assert load_image(ok, SPEC, max_pixels=64 * 48).shape == (1, 8, 8)
