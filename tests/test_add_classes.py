"""On-device class addition: the command, the Python API, refusals that write nothing."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from m2kd.runtime.api import Runtime
from m2kd.runtime.bundle import load_bundle, save_bundle
from m2kd.runtime.cli import cli
from m2kd.runtime.errors import ConfigError
from m2kd.runtime.m2kd import PASS_WEIGHTS
from m2kd.runtime.update import method_for
from m2kd.trainer.samples import write_samples

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"  # classes 0-3 of digits
FAST = ["--epochs", "2", "--batch-size", "32", "--no-progress", "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def bundle_copy(tmp_path):
    path = tmp_path / "bundle.safetensors"
    path.write_bytes(GOLDEN.read_bytes())
    return path


@pytest.fixture(scope="module")
def new_digits(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("new")
    write_samples(digits, root / "data", 20, ["4", "5"], split="train")
    write_samples(digits, root / "val", 10, ["0", "3", "4", "5"], split="test")
    return root


def test_add_classes_appends_a_verified_step(bundle_copy, new_digits):
    result = run("add-classes", bundle_copy, "--data", new_digits / "data", "--val",
                 new_digits / "val", "--keep-previous", *FAST)
    assert result.exit_code == 0, result.output
    assert "before" in result.output and "after" in result.output
    assert "images/s" in result.output and "peak memory" in result.output
    rt = Runtime.load(bundle_copy)  # verifies every probe
    assert rt.steps == 3 and rt.classes[-2:] == ["4", "5"]
    prev = bundle_copy.with_name(bundle_copy.name + ".prev")
    assert digest(prev) == digest(GOLDEN)


def test_out_leaves_the_original_untouched(bundle_copy, new_digits, tmp_path):
    out = tmp_path / "new.safetensors"
    assert run("add-classes", bundle_copy, "--data", new_digits / "data", "--out", out,
               *FAST).exit_code == 0
    assert digest(bundle_copy) == digest(GOLDEN)
    assert load_bundle(out).num_steps == 3


def _folder(tmp_path, layout: dict[str, list[bytes]]) -> Path:
    root = tmp_path / "incoming"
    for cls, files in layout.items():
        (root / cls).mkdir(parents=True)
        for i, data in enumerate(files):
            (root / cls / f"{i}.png").write_bytes(data)
    root.mkdir(exist_ok=True)
    return root


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (13, 9), 200).save(buf, format="PNG")
    return buf.getvalue()


REFUSALS = {
    "existing class": ({"2": ["png"], "new": ["png"]}, "already in the bundle: 2"),
    "empty class folder": ({"a": ["png"], "b": []}, "class folder has no images"),
    "no class folders": ({}, "no class sub-folders"),
    "corrupt image": ({"a": ["png", "junk"], "b": ["png"]}, "1 unreadable image(s)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line_and_write_nothing(bundle_copy, tmp_path, case):
    layout, message = REFUSALS[case]
    data = _folder(tmp_path, {c: [_png() if f == "png" else b"not an image" for f in files]
                              for c, files in layout.items()})
    before = sorted(p.name for p in bundle_copy.parent.iterdir())
    result = run("add-classes", bundle_copy, "--data", data, "--keep-previous", *FAST)
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines()
             if not line.startswith("warning: ")]  # e.g. a one-image class
    assert len(lines) == 1 and message in lines[0], result.output
    assert digest(bundle_copy) == digest(GOLDEN)
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == before


def test_skip_bad_goes_on_without_unreadable_images(bundle_copy, tmp_path):
    data = _folder(tmp_path, {"a": [_png(), b"junk"], "b": [_png()]})
    result = run("add-classes", bundle_copy, "--data", data, "--skip-bad", *FAST)
    assert result.exit_code == 0, result.output
    assert load_bundle(bundle_copy).classes[-2:] == ["a", "b"]


def test_bundle_that_fails_verify_is_refused(tmp_path, new_digits):
    bundle = load_bundle(GOLDEN)
    name = next(iter(bundle.weights))
    bundle.weights[name][bundle.masks[name] == 1] += 1.0
    path = tmp_path / "bad.safetensors"
    save_bundle(bundle, path)
    result = run("add-classes", path, "--data", new_digits / "data", *FAST)
    assert result.exit_code != 0 and "step 1 does not reconstruct" in result.output


def test_full_bundle_is_refused_with_what_is_left(tmp_path, new_digits):
    bundle = copy.deepcopy(load_bundle(GOLDEN))
    for mask in bundle.masks.values():
        mask[mask == 0] = 2  # nothing free any more
    path = tmp_path / "full.safetensors"
    save_bundle(bundle, path)
    result = run("add-classes", path, "--data", new_digits / "data", *FAST)
    assert result.exit_code != 0
    assert "too little free capacity" in result.output and "0.00% free" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device_is_refused(bundle_copy, new_digits):
    result = run("add-classes", bundle_copy, "--data", new_digits / "data", "--device", "cuda",
                 "--epochs", "1")
    assert result.exit_code != 0 and "CUDA is not available" in result.output
    assert digest(bundle_copy) == digest(GOLDEN)


def test_python_api_adds_classes_from_tensors(digits):
    rt = Runtime.load(GOLDEN, device="cpu")
    six = digits.train_images[digits.train_labels == 6][:16]
    seven = digits.train_images[digits.train_labels == 7][:16]
    report = rt.add_classes({"six": six, "seven": seven}, epochs=2, batch_size=16)
    assert report.step == 3 and rt.classes[-2:] == ["six", "seven"]
    predictions = rt.predict(six[:3], top_k=6)
    assert all(len(p.labels) == 6 for p in predictions)
    assert {"six", "seven"} <= set(predictions[0].labels)


def test_the_head_gets_pass_by_default_and_the_statistics_classifiers_plain_m2kd(
        three_step_bundle):
    bundle = three_step_bundle[-1]
    assert method_for(bundle, "head") == "m2kd_pass"
    assert method_for(bundle, "stats-base") == "m2kd"
    assert method_for(bundle, "stats-base", "m2kd_pass") == "m2kd_pass"
    with pytest.raises(ConfigError, match="unknown on-device method 'lwf_mc'"):
        method_for(bundle, "head", "lwf_mc")


def test_pass_on_a_bundle_without_statistics_is_refused_and_writes_nothing(bundle_copy,
                                                                          new_digits):
    assert method_for(load_bundle(GOLDEN), "head") == "m2kd"  # v1: nothing to sample
    result = run("add-classes", bundle_copy, "--data", new_digits / "data", "--method",
                 "m2kd_pass", *FAST)
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: m2kd_pass needs the old classes' statistics, which this bundle (written "
        "before format v2) lacks; use --method m2kd"]
    assert digest(bundle_copy) == digest(GOLDEN)


def test_add_classes_for_the_head_runs_pass_and_records_it(three_step_bundle, digits,
                                                         tmp_path):
    path = tmp_path / "bundle.safetensors"
    save_bundle(three_step_bundle[-1], path)
    unseen = [c for c in digits.class_names if c not in three_step_bundle[-1].classes][:2]
    write_samples(digits, tmp_path / "new", 16, unseen, split="train")
    result = run("add-classes", path, "--data", tmp_path / "new", "--classifier", "head",
                 *FAST)
    assert result.exit_code == 0, result.output
    assert "(m2kd_pass)" in result.output.splitlines()[0]
    bundle = Runtime.load(path).bundle  # verifies every probe
    assert bundle.method["name"] == "m2kd_pass"
    assert bundle.method["params"]["old_features"] == PASS_WEIGHTS["old_features"]
    assert bundle.method["params"]["feature_distillation"] == PASS_WEIGHTS["feature_distillation"]
