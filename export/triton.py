"""A Triton Inference Server model repository for a bundle (ONNX Runtime backend).

Layout: `REPO/<name>/config.pbtxt` and `REPO/<name>/<version>/model.onnx`, where
version k is the per-step graph of step k (dynamic batching on), or, with
`all_steps`, version 1 is the all-steps graph. The all-steps graph takes a
`step` input of shape [1] that Triton must not batch (it would become [B, 1]),
so that config uses `max_batch_size: 0` and no dynamic batching.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from m2kd.runtime.bundle import Bundle
from m2kd.runtime.errors import ConfigError, DataError

from .onnx_export import all_steps_graph_bytes, step_graph_bytes
from .parity import ParityError, _session, check_step_graph

ONNX_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_UINT8": "tensor(uint8)",
              "TYPE_INT64": "tensor(int64)", "TYPE_BOOL": "tensor(bool)"}


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'


def config_text(bundle: Bundle, name: str, all_steps: bool, preprocess: bool,
                max_batch: int) -> str:
    s = bundle.input_spec
    image = ([s.height, s.width, s.channels], "TYPE_UINT8") if preprocess else \
        ([s.channels, s.height, s.width], "TYPE_FP32")
    if all_steps:
        inputs = [_tensor("input", image[1], [-1] + image[0]), _tensor("step", "TYPE_INT64", [1])]
        outputs = [_tensor("logits", "TYPE_FP32", [-1, -1]),
                   _tensor("probabilities", "TYPE_FP32", [-1, -1]),
                   _tensor("valid", "TYPE_BOOL", [-1])]
        batching, max_batch = "", 0
    else:
        inputs = [_tensor("input", image[1], image[0])]
        outputs = [_tensor("logits", "TYPE_FP32", [-1]),
                   _tensor("probabilities", "TYPE_FP32", [-1])]
        batching = "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
    sep = ",\n"
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
            f"version_policy: {{ all: {{}} }}\n"
            f"input [\n{sep.join(inputs)}\n]\noutput [\n{sep.join(outputs)}\n]\n{batching}")


def write_repository(bundle: Bundle, repo: Path, name: str = "m2kd", all_steps: bool = False,
                     preprocess: bool = False, max_batch: int = 64) -> Path:
    """Build the model folder beside its final place, validate it, then move it in."""
    target = repo / name
    if target.exists():
        raise ConfigError(f"{target} exists; remove it or choose another --name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError("--name may hold letters, digits, '_', '.' and '-' only")
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (staging / "config.pbtxt").write_text(
            config_text(bundle, name, all_steps, preprocess, max_batch))
        graphs = {1: all_steps_graph_bytes(bundle, preprocess)} if all_steps else \
            {k: step_graph_bytes(bundle, k, preprocess) for k in range(1, bundle.num_steps + 1)}
        for version, data in graphs.items():
            (staging / str(version)).mkdir()
            (staging / str(version) / "model.onnx").write_bytes(data)
        validate_repository(staging, bundle, name)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_config(path: Path) -> dict:
    """The fields of config.pbtxt that this module writes, read back from the text."""
    text = path.read_text()
    tensors = {}
    for section in ("input", "output"):
        block = re.search(rf"^{section} \[(.*?)^\]", text, re.S | re.M)
        if not block:
            raise DataError(f"{path}: no {section} section")
        tensors[section] = [
            {"name": m[0], "data_type": m[1], "dims": [int(d) for d in m[2].split(",")]}
            for m in re.findall(r'name: "([^"]+)" data_type: (\w+) dims: \[ ([^\]]+) \]',
                                block.group(1))]
    return {
        "name": re.search(r'^name: "([^"]+)"', text, re.M).group(1),
        "platform": re.search(r'^platform: "([^"]+)"', text, re.M).group(1),
        "max_batch_size": int(re.search(r"^max_batch_size: (\d+)", text, re.M).group(1)),
        "dynamic_batching": "dynamic_batching" in text,
        **tensors,
    }


def validate_repository(folder: Path, bundle: Bundle, name: str) -> None:
    """Read the config back; every version's graph must match it and pass parity."""
    cfg = read_config(folder / "config.pbtxt")
    if cfg["name"] != name or cfg["platform"] != "onnxruntime_onnx":
        raise ParityError("config.pbtxt: wrong name or platform")
    versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir())
    for version in versions:
        data = (folder / str(version) / "model.onnx").read_bytes()
        session = _session(data)
        for declared, actual in ((cfg["input"], session.get_inputs()),
                                 (cfg["output"], session.get_outputs())):
            _match(declared, actual, cfg["max_batch_size"] > 0)
        all_steps = any(t["name"] == "step" for t in cfg["input"])
        steps = range(1, bundle.num_steps + 1) if all_steps else [version]
        if cfg["input"][0]["data_type"] == "TYPE_FP32":
            for k in steps:
                check_step_graph(bundle, data, k, all_steps=all_steps)


def _match(declared: list[dict], actual, batched: bool) -> None:
    by_name = {a.name: a for a in actual}
    for t in declared:
        a = by_name.get(t["name"])
        if a is None or ONNX_TYPES[t["data_type"]] != a.type:
            raise ParityError(f"config.pbtxt: tensor {t['name']} does not match the graph")
        shape = a.shape[1:] if batched else a.shape
        fixed = t["dims"]
        if len(shape) != len(fixed) or any(
                isinstance(s, int) and d != -1 and s != d for s, d in zip(shape, fixed)):
            raise ParityError(f"config.pbtxt: dims of {t['name']} {fixed} do not match the "
                              f"graph's {shape}")
