"""CUDA paths: training with bf16 autocast keeps the invariants; GPU inference agrees.
Skipped without CUDA (see conftest.py)."""

from __future__ import annotations

import pytest
import torch

from m2kd.runtime.engine import run_step
from m2kd.runtime.m2kd import M2KD
from m2kd.runtime.reconstruct import check_probes, model_of_step
from tests.conftest import fast_config, steps_of

pytestmark = pytest.mark.gpu


def test_cuda_steps_with_autocast_keep_owned_weights_and_probes(digits):
    bundles, bundle = [], None
    for names, data in steps_of(digits, 3):
        bundle, _ = run_step(bundle, data, names, M2KD(), fast_config(device="cuda", amp="auto"),
                             arch="resnet_small", input_spec=digits.input_spec)
        bundles.append(bundle)
    first, last = bundles[0], bundles[-1]
    for name, w in first.weights.items():
        owned = first.masks[name] == 1
        assert torch.equal(last.weights[name][owned], w[owned])
    assert all(c.ok for c in check_probes(last))


def test_gpu_inference_matches_cpu(three_step_bundle):
    bundle = three_step_bundle[-1]
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        cpu = model_of_step(bundle, 3)(x).logits
        gpu = model_of_step(bundle, 3, "cuda")(x.cuda()).logits.cpu()
    assert (cpu - gpu).abs().max() < 1e-3
    assert torch.equal(cpu.argmax(1), gpu.argmax(1))


def test_onnxruntime_really_uses_cuda(tmp_path):
    from pathlib import Path

    from m2kd.export.onnx_export import step_graph_bytes
    from m2kd.runtime.bundle import load_bundle
    from m2kd.runtime.onnx_backend import OnnxModel

    path = tmp_path / "m.onnx"
    golden = Path(__file__).parent / "data" / "golden-v1.safetensors"
    path.write_bytes(step_graph_bytes(load_bundle(golden), 2))
    assert OnnxModel(path, "cuda").device == "cuda"
