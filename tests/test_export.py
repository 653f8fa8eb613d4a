"""ONNX export: checker, parity with the runtime, all-steps graph, invalid steps,
Triton layout, and the onnxruntime backend."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from m2kd.export.onnx_export import all_steps_graph_bytes, step_graph_bytes
from m2kd.export.parity import check_step_graph, parity_tolerance
from m2kd.export.triton import read_config, write_repository
from m2kd.runtime.bundle import load_bundle, save_bundle
from m2kd.runtime.cli import cli
from m2kd.runtime.errors import ConfigError
from m2kd.runtime.onnx_backend import OnnxModel
from m2kd.runtime.classifier import classifier_config, scorer_of_step
from m2kd.runtime.classifier_option import CLASSIFIERS

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"


def _session(data: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def bundle(three_step_bundle):
    return three_step_bundle[-1]


@pytest.fixture(scope="module")
def all_steps(bundle):
    return all_steps_graph_bytes(bundle)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_step_graph_passes_checker_and_parity(bundle, step):
    data = step_graph_bytes(bundle, step)
    onnx.checker.check_model(onnx.load_from_string(data))
    results = check_step_graph(bundle, data, step)  # raises on mismatch
    assert sorted(r.batch for r in results) == [1, 2, 7]
    assert all(r.max_abs_diff <= 1e-4 for r in results)


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_every_classifier_exports_with_parity(bundle, kind):
    other = copy.copy(bundle)
    other.classifier = classifier_config(kind)
    check_step_graph(other, step_graph_bytes(other, 3), 3)  # raises on mismatch
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)).numpy()
    logits = _session(all_steps_graph_bytes(other)).run(None, {"input": x,
                                                             "step": np.array([2])})[0]
    with torch.no_grad():
        expected = scorer_of_step(other, 2)(torch.from_numpy(x)).numpy()
    assert np.abs(logits[:, :4] - expected).max() <= parity_tolerance(expected)


def test_metadata_names_step_classes_checksum_and_input(bundle):
    props = {p.key: p.value for p in onnx.load_from_string(
        step_graph_bytes(bundle, 2)).metadata_props}
    assert props["m2kd.step"] == "2"
    assert json.loads(props["m2kd.classes"]) == bundle.classes_up_to(2)
    assert props["m2kd.bundle_checksum"] == bundle.checksum()
    assert json.loads(props["m2kd.input_spec"])["channels"] == 1


def test_all_steps_graph_equals_per_step_graphs(bundle, all_steps):
    session = _session(all_steps)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)).numpy()
    for k in (1, 2, 3):
        expected = _session(step_graph_bytes(bundle, k)).run(["logits"], {"input": x})[0]
        logits, probs, valid = session.run(None, {"input": x, "step": np.array([k])})
        n = len(bundle.classes_up_to(k))
        assert valid.sum() == n and valid[:n].all()
        assert np.abs(logits[:, :n] - expected).max() <= 1e-4
        assert np.isneginf(logits[:, n:]).all() and (probs[:, n:] == 0).all()


def test_all_steps_graph_is_about_the_bundle_size(bundle, all_steps):
    one_step = len(step_graph_bytes(bundle, 3))
    assert len(all_steps) < 2 * one_step < bundle.num_steps * one_step


@pytest.mark.parametrize("bad", [0, -1, 4, 100])
def test_invalid_step_is_rejected_by_the_graph(all_steps, bad):
    session = _session(all_steps)
    with pytest.raises(Exception, match="out of data bounds|indices"):
        session.run(None, {"input": np.zeros((1, 1, 8, 8), np.float32),
                           "step": np.array([bad])})


def test_preprocess_graph_takes_uint8_nhwc(bundle):
    spec = bundle.input_spec
    pixels = torch.randint(0, 256, (3, 8, 8, 1), dtype=torch.uint8)
    got = _session(step_graph_bytes(bundle, 3, preprocess=True)).run(
        ["logits"], {"input": pixels.numpy()})[0]
    x = (pixels.permute(0, 3, 1, 2).float() / 255 - spec.mean[0]) / spec.std[0]
    with torch.no_grad():
        expected = scorer_of_step(bundle, 3)(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_fp16_graph_passes_its_documented_tolerance(bundle):
    check_step_graph(bundle, step_graph_bytes(bundle, 3, fp16=True), 3, fp16=True)


def test_export_refuses_a_bundle_that_fails_verify(tmp_path):
    broken = load_bundle(GOLDEN)
    name = next(iter(broken.weights))
    broken.weights[name][broken.masks[name] == 1] += 1.0
    path = tmp_path / "broken.safetensors"
    save_bundle(broken, path)
    result = CliRunner().invoke(cli, ["export", "onnx", str(path), "--out",
                                      str(tmp_path / "m.onnx")])
    assert result.exit_code != 0 and "does not reconstruct" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_and_onnxruntime_backend_agree_with_torch(tmp_path, digits):
    from m2kd.trainer.samples import write_samples

    images = tmp_path / "imgs"
    write_samples(digits, images, 2, ["0", "1", "2", "3"])
    runner = CliRunner()
    for step in ("all", "2"):
        out = tmp_path / f"m{step}.onnx"
        result = runner.invoke(cli, ["export", "onnx", str(GOLDEN), "--step", step, "--out",
                                     str(out)])
        assert result.exit_code == 0, result.output
        assert "parity ok" in result.output
    torch_rows = runner.invoke(cli, ["predict", str(GOLDEN), str(images), "--json"]).output
    ort_rows = runner.invoke(cli, ["predict", str(tmp_path / "mall.onnx"), str(images),
                                   "--json"]).output
    top1 = [[json.loads(r)["top"][0]["label"] for r in rows.splitlines()]
            for rows in (torch_rows, ort_rows)]
    assert len(top1[0]) == 8 and top1[0] == top1[1]


def test_onnx_backend_validates_steps(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(step_graph_bytes(load_bundle(GOLDEN), 2))
    model = OnnxModel(path, "cpu")
    assert model.device == "cpu" and model.classes() == ["0", "1", "2", "3"]
    with pytest.raises(ConfigError, match="only step 2"):
        model.predict(torch.zeros(1, 1, 8, 8), step=1)


def test_triton_repository_reads_back_and_runs(bundle, tmp_path):
    folder = write_repository(bundle, tmp_path / "repo")
    cfg = read_config(folder / "config.pbtxt")
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["dynamic_batching"]
    assert cfg["max_batch_size"] == 64 and cfg["input"][0]["dims"] == [1, 8, 8]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["1", "2", "3"]
    all_folder = write_repository(bundle, tmp_path / "repo", name="all", all_steps=True)
    cfg = read_config(all_folder / "config.pbtxt")
    assert cfg["max_batch_size"] == 0 and [t["name"] for t in cfg["input"]] == ["input", "step"]
    with pytest.raises(ConfigError, match="exists"):
        write_repository(bundle, tmp_path / "repo")
