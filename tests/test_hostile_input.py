"""Hostile input costs no memory, no 500 and no wrong answer (issue 10)."""

from __future__ import annotations

import fcntl
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from m2kd.runtime.atomic import atomic_write_bytes
from m2kd.runtime.bundle import InputSpec, load_bundle, save_bundle
from m2kd.runtime.cli import cli
from m2kd.runtime.errors import BundleFormatError, DataError
from m2kd.runtime.folders import read_class_folders
from m2kd.runtime.images import ImageTooLarge, load_image

from tests.hostile import png_bomb, rewrite_bundle

SPEC = InputSpec(1, 8, 8, (0.5,), (0.5,))
GOLDEN_V2 = Path(__file__).parent / "data" / "golden-v2.safetensors"

# Peak RSS growth (MB) of a fresh process decoding `path` with `max_pixels` (Linux /proc).
_PEAK_GROWTH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from m2kd.runtime.bundle import InputSpec
    from m2kd.runtime.images import load_image
    from m2kd.runtime.errors import DataError

    def kib(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])

    spec = InputSpec(1, 8, 8, (0.5,), (0.5,))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    except OSError:
        print("nan")
        print("no /proc/self/clear_refs")
        raise SystemExit(0)
    before = kib("VmRSS")
    try:
        load_image(sys.argv[1], spec, int(sys.argv[2]))
        outcome = "decoded"
    except DataError as e:
        outcome = str(e)
    print((kib("VmHWM") - before) / 1024)
    print(outcome)
""")


def _peak_growth_mb(path, max_pixels: int) -> float:
    out = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, str(path), str(max_pixels)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[0]), out.stdout + out.stderr


def test_pixel_bomb_is_refused_before_decoding_with_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(9000, 9000))  # 0.2 MB file, 243 MB decoded
    with pytest.raises(ImageTooLarge, match="9000x9000 pixels is over the limit"):
        load_image(bomb, SPEC)
    bounded, log = _peak_growth_mb(bomb, 4096 * 4096)
    if math.isnan(bounded):
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    assert bounded < 30, log
    unbounded, log = _peak_growth_mb(bomb, 10**9)
    assert unbounded > 200, log  # the same file, decoded: what the limit saves


def test_a_pixel_bomb_in_a_class_folder_is_named_with_its_size(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "bomb.png").write_bytes(png_bomb(5000, 5000))
    (tmp_path / "cat" / "ok.png").write_bytes(png_bomb(8, 8))
    with pytest.raises(DataError, match="bomb.png: 5000x5000 pixels is over the limit"):
        read_class_folders(tmp_path, SPEC)


def test_an_image_within_the_limit_still_decodes(tmp_path):
    ok = tmp_path / "ok.png"
    ok.write_bytes(png_bomb(64, 48))
    assert load_image(ok, SPEC, max_pixels=64 * 48).shape == (1, 8, 8)


def test_stale_temp_files_of_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "bundle.safetensors"
    target.write_bytes(b"old")
    stale = tmp_path / ".bundle.safetensors.abc123.tmp"  # a writer killed mid-write
    stale.write_bytes(b"partial")
    other = tmp_path / ".other.safetensors.abc123.tmp"  # not ours: left alone
    other.write_bytes(b"x")
    live = tmp_path / ".bundle.safetensors.live99.tmp"  # a live writer holds its lock
    with open(live, "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        atomic_write_bytes(target, b"new")
        assert live.exists()
    assert target.read_bytes() == b"new"
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".bundle.safetensors.live99.tmp", ".other.safetensors.abc123.tmp", "bundle.safetensors"]


@pytest.mark.parametrize("key", ["classes", "method", "classifier"])
@pytest.mark.parametrize("command", ["inspect", "verify", "predict", "export", "add-classes"])
def test_deeply_nested_metadata_gives_one_clean_line(tmp_path, key, command):
    nested = "[" * 50_000 + "]" * 50_000
    bad = rewrite_bundle(GOLDEN_V2, tmp_path / "b.safetensors", **{key: nested})
    result = _run_command(command, bad, tmp_path)
    assert result.exit_code != 0
    assert f"metadata {key!r}" in result.output and "Traceback" not in result.output
    assert result.output.count("\n") == 1, result.output


def _run_command(command, bundle, tmp_path):
    args = {"inspect": ["inspect", str(bundle)], "verify": ["verify", str(bundle)],
            "predict": ["predict", str(bundle), str(GOLDEN_V2)],
            "export": ["export", "onnx", str(bundle), "--out", str(tmp_path / "m.onnx")],
            "add-classes": ["add-classes", str(bundle), "--data", str(tmp_path)]}[command]
    return CliRunner().invoke(cli, args)


def test_missing_backbone_tensor_is_named(tmp_path):
    def drop_first_backbone(tensors):
        name = next(k for k in tensors if k.startswith("backbone."))
        drop_first_backbone.name = name
        del tensors[name]

    bad = rewrite_bundle(GOLDEN_V2, tmp_path / "b.safetensors", drop_first_backbone)
    result = CliRunner().invoke(cli, ["verify", str(bad)])
    assert result.exit_code != 0 and f"lacks tensor '{drop_first_backbone.name}'" in result.output


def _flipped(tmp_path, value):
    """The golden bundle with one owned weight changed and the checksum recomputed."""
    bundle = load_bundle(GOLDEN_V2)
    name = next(iter(bundle.weights))
    bundle.weights[name][bundle.masks[name] == 1] = value
    path = tmp_path / "flipped.safetensors"
    save_bundle(bundle, path)  # a fresh, matching checksum: only the probes can tell
    return path


def test_a_weight_that_is_not_finite_is_refused_on_save_and_on_load(tmp_path):
    with pytest.raises(BundleFormatError, match="weights must be finite"):
        _flipped(tmp_path, float("nan"))

    def poison(tensors):
        name = next(k for k in sorted(tensors) if k.startswith("backbone."))
        tensors[name].view(-1)[0] = float("inf")
    path = rewrite_bundle(GOLDEN_V2, tmp_path / "inf.safetensors", poison)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code != 0 and "weights must be finite" in result.output
    assert "Traceback" not in result.output


def test_predict_refuses_and_inspect_flags_a_bundle_whose_probes_fail(tmp_path):
    path = _flipped(tmp_path, 0.5)
    image = tmp_path / "x.png"
    image.write_bytes(png_bomb(8, 8))
    result = CliRunner().invoke(cli, ["predict", str(path), str(image), "--json"])
    assert result.exit_code != 0 and "does not reconstruct" in result.output
    assert "NaN" not in result.output
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0 and "verification: FAILS: step 1" in result.output
    report = json.loads(CliRunner().invoke(cli, ["inspect", str(path), "--json"]).output)
    assert report["verified"] is False


def _class_tree(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(png_bomb(8, 8))
    return root


def _read(root, **kwargs):
    seen = []
    names, pixels, _ = read_class_folders(root, SPEC, warn=seen.append, **kwargs)
    return names, len(pixels), seen


def test_hidden_and_resource_fork_files_are_skipped(tmp_path):
    root = _class_tree(tmp_path / "new", {"cat": 2, "dog": 2})
    (root / "cat" / "._0.png").write_bytes(b"\0\5\26\7 mac resource fork")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    assert _read(root) == (["cat", "dog"], 4, [])


def test_nested_folders_symlink_loops_and_one_image_classes_are_warned(tmp_path):
    root = _class_tree(tmp_path / "new", {"cat": 3, "dog": 1})
    _class_tree(root / "cat", {"more": 2})
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)
    names, n, seen = _read(root)
    assert names == ["cat", "dog"] and n == 4
    assert any("2 image(s) in nested sub-folders are ignored" in w for w in seen)
    assert any("loop: symlink loop ignored" in w for w in seen)
    assert any("dog: class has only 1 image" in w for w in seen)


def test_train_on_a_folder_offers_only_options_it_has(tmp_path):
    root = _class_tree(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"not a png")
    args = ["train", "--dataset", "folder", "--root", str(root), "--image-size", "8",
            "--base-classes", "2", "--steps", "1", "--epochs", "1", "--no-progress",
            "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "use --skip-bad" in result.output
    result = CliRunner().invoke(cli, args + ["--skip-bad"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("step", [0, -1, 3, 2.5, True, "1"])
def test_both_backends_refuse_a_step_that_is_not_an_integer_in_range(tmp_path, step):
    from m2kd.export.onnx_export import all_steps_graph_bytes
    from m2kd.runtime.api import Runtime
    from m2kd.runtime.errors import ConfigError
    from m2kd.runtime.onnx_backend import OnnxModel

    bundle = load_bundle(GOLDEN_V2)  # 2 steps
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ConfigError, match="does not exist"):
        Runtime(bundle, device="cpu").predict(x, step=step)
    graph = tmp_path / "all.onnx"
    graph.write_bytes(all_steps_graph_bytes(bundle))
    with pytest.raises(ConfigError, match="does not exist"):
        OnnxModel(graph, "cpu").predict(x.clamp(0, 1), step=step)
