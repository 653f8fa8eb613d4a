"""The `m2kd` command: help everywhere, one-line errors, real runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from m2kd.runtime.cli import COMMANDS, cli

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"
GOLDEN_V2 = Path(__file__).parent / "data" / "golden-v2.safetensors"
DIGIT = Path(__file__).parent / "data" / "digit.png"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["export onnx", "export triton"])
def test_every_command_has_help(command):
    result = run(*command.split(), "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("args,message", [
    (["verify", "missing.safetensors"], "no such bundle file"),
    (["inspect", "README.md"], "not a safetensors bundle"),
    (["train", "--dataset", "digits", "--base-classes", "11"], "base classes must be in 1..10"),
    (["train", "--method", "nope"], "unknown method 'nope'"),
    (["train", "--dataset", "cifar100"], "needs --root"),
    (["train", "--device", "tpu"], "device"),
    (["train", "--epochs", "0"], "--epochs"),
    (["predict", str(GOLDEN), "nothing-here.png"], "no such file or folder"),
    (["predict", str(GOLDEN), "README.md"], "not a readable image"),
    (["predict", str(GOLDEN), str(DIGIT), "--step", "3"], "step 3 does not exist"),
    (["predict", str(GOLDEN), str(DIGIT), "--classifier", "pseudo"], "no class statistics"),
    (["predict", "model.onnx", str(DIGIT), "--classifier", "pseudo"],
     "--classifier applies to bundles"),
    (["export", "onnx", str(GOLDEN), "--out", "x.onnx", "--classifier", "lda"],
     "no class statistics"),
    (["nonsense"], "No such command"),
])
def test_bad_input_is_one_line_without_traceback(args, message):
    result = run(*args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_verify_fails_with_the_step_on_a_probe_mismatch(tmp_path):
    from m2kd.runtime.bundle import load_bundle, save_bundle

    bundle = load_bundle(GOLDEN)
    name = next(iter(bundle.weights))
    bundle.weights[name][bundle.masks[name] == 2] *= 2.0  # valid file, wrong weights
    path = tmp_path / "b.safetensors"
    save_bundle(bundle, path)
    result = run("verify", path)
    assert result.exit_code == 1
    assert "step 2 does not reconstruct" in result.output


def test_inspect_shows_sizes_and_free_weights():
    result = run("inspect", GOLDEN, "--json")
    report = json.loads(result.output)
    assert set(report["bytes_by_part"]) == {"weights", "masks", "batchnorm", "heads", "probes",
                                            "statistics"}
    assert sum(report["bytes_by_part"].values()) < report["file_bytes"]
    assert 0 < report["free_fraction"] < 1
    assert report["steps"][1]["classes"] == ["2", "3"]


def test_end_to_end_train_verify_predict_on_digits(tmp_path):
    out = tmp_path / "run"
    result = run("train", "--dataset", "digits", "--base-classes", "5", "--increment", "5",
                 "--epochs", "8", "--batch-size", "32", "--lr", "0.5", "--out", out,
                 "--no-progress", "--device", "cpu")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [len(s["classes"]) for s in results["steps"]] == [5, 5]
    assert results["steps"][0]["top1"] > 0.8  # 5 real digit classes, far above chance (0.2)
    assert results["steps"][1]["top1"] > 0.3  # 10 classes after one step, chance is 0.1
    assert results["config"]["base_rotations"] and results["config"]["augment"] == "none"
    assert run("verify", out / "bundle.safetensors").exit_code == 0
    plain = tmp_path / "plain"
    assert run("train", "--dataset", "digits", "--steps", "1", "--epochs", "1",
               "--no-base-rotations", "--augment", "shift", "--out", plain, "--no-progress",
               "--device", "cpu").exit_code == 0
    config = json.loads((plain / "results.json").read_text())["config"]
    assert not config["base_rotations"] and config["augment"] == "shift"

    images = tmp_path / "imgs"
    assert run("samples", "--dataset", "digits", "--out", images, "--per-class", "2",
               "--classes", "3,7").exit_code == 0
    result = run("predict", out / "bundle.safetensors", images, "--json", "--top-k", "2")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 4 and all(len(r["top"]) == 2 for r in rows)
    shutil.rmtree(images)


def test_serving_commands_can_choose_another_classifier(tmp_path):
    pytest.importorskip("onnxruntime")
    graph = tmp_path / "pseudo.onnx"
    result = run("export", "onnx", GOLDEN_V2, "--out", graph, "--classifier", "pseudo")
    assert result.exit_code == 0 and "parity ok" in result.output, result.output
    answers = [run("predict", model, DIGIT, "--json", *extra).output
               for model, extra in ((GOLDEN_V2, ("--classifier", "pseudo")), (graph, ()))]
    tops = [json.loads(a)["top"] for a in answers]
    assert [t["label"] for t in tops[0]] == [t["label"] for t in tops[1]]
    assert tops[0][0]["score"] == pytest.approx(tops[1][0]["score"], abs=1e-4)
