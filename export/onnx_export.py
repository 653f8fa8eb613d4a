"""Write ONNX graphs of a bundle, then check them against the torch runtime.

Metadata (`metadata_props`, all strings): `m2kd.format` (`m2kd-onnx/1`),
`m2kd.step` (`K` or `all`), `m2kd.classes` (JSON list of class names of the
step, or for `all` the per-step lists), `m2kd.bundle_checksum`,
`m2kd.input_spec` (the bundle's JSON), `m2kd.input_format` (`float32_nchw`
normalised, or `uint8_nhwc` with `--preprocess`), `m2kd.precision`.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch

from m2kd.runtime.atomic import atomic_write_bytes
from m2kd.runtime.bundle import Bundle
from m2kd.runtime.errors import ConfigError

from .graphs import AllStepsGraph, StepGraph

OPSET = 17
ONNX_FORMAT = "m2kd-onnx/1"


def _example(bundle: Bundle, preprocess: bool, batch: int = 2) -> torch.Tensor:
    s = bundle.input_spec
    if preprocess:
        return torch.zeros(batch, s.height, s.width, s.channels, dtype=torch.uint8)
    return torch.zeros(batch, s.channels, s.height, s.width)


def _to_onnx_bytes(module: torch.nn.Module, args: tuple, input_names, output_names,
                   dynamic_axes) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buf, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          opset_version=OPSET, dynamo=False, do_constant_folding=False)
    return buf.getvalue()


def _with_metadata(data: bytes, props: dict[str, str]) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _props(bundle: Bundle, step: str, classes, preprocess: bool, fp16: bool) -> dict:
    return {
        "m2kd.format": ONNX_FORMAT,
        "m2kd.step": step,
        "m2kd.num_steps": str(bundle.num_steps),
        "m2kd.classes": json.dumps(classes),
        "m2kd.bundle_checksum": bundle.checksum(),
        "m2kd.input_spec": bundle.input_spec.to_json(),
        "m2kd.input_format": "uint8_nhwc" if preprocess else "float32_nchw",
        "m2kd.precision": "fp16" if fp16 else "fp32",
    }


def step_graph_bytes(bundle: Bundle, step: int, preprocess: bool = False,
                     fp16: bool = False) -> bytes:
    if not 1 <= step <= bundle.num_steps:
        raise ConfigError(f"step {step} does not exist; the bundle has steps "
                          f"1..{bundle.num_steps}")
    data = _to_onnx_bytes(StepGraph(bundle, step, preprocess, fp16),
                          (_example(bundle, preprocess),), ["input"],
                          ["logits", "probabilities"],
                          {"input": {0: "batch"}, "logits": {0: "batch"},
                           "probabilities": {0: "batch"}})
    props = _props(bundle, str(step), bundle.classes_up_to(step), preprocess, fp16)
    return _with_metadata(data, props)


def all_steps_graph_bytes(bundle: Bundle, preprocess: bool = False) -> bytes:
    step = torch.tensor([bundle.num_steps], dtype=torch.int64)
    data = _to_onnx_bytes(AllStepsGraph(bundle, preprocess),
                          (_example(bundle, preprocess), step), ["input", "step"],
                          ["logits", "probabilities", "valid"],
                          {"input": {0: "batch"}, "logits": {0: "batch"},
                           "probabilities": {0: "batch"}})
    props = _props(bundle, "all", [rec.classes for rec in bundle.steps], preprocess, False)
    return _with_metadata(data, props)


def write_graph(data: bytes, out: str | os.PathLike) -> Path:
    out = Path(out)
    atomic_write_bytes(out, data)
    return out
