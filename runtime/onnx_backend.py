"""The onnxruntime backend: runs a graph written by `m2kd export onnx`.

Class names, input spec and input format come from the graph's metadata, so a
device needs only the .onnx file. CUDA is used only when the session really got
the CUDA provider (asking for it silently falls back to CPU when it cannot load).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .bundle import InputSpec
from .errors import ConfigError, DataError, DeviceError
from .images import normalise
from .inference import Prediction
from .step_number import checked_step

ONNX_FORMAT = "m2kd-onnx/1"


class OnnxModel:
    def __init__(self, path: str | os.PathLike, device: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the onnxruntime backend needs onnxruntime: "
                              "pip install 'm2kd[onnx]'") from None
        if device not in ("auto", "cpu", "cuda"):
            raise DeviceError(f"device {device!r} is not supported by onnxruntime here; "
                              "use auto, cpu or cuda")
        ort.set_default_logger_severity(3)
        providers = ["CPUExecutionProvider"]
        # "auto" asks for CUDA only where a GPU exists: onnxruntime-gpu lists the provider
        # even on CPU-only machines and then fails loudly to load it.
        wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if wants_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise DataError(f"{path}: not a loadable ONNX model ({str(e)[:120]})") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise DeviceError("CUDA was requested but onnxruntime could not use it here")
        self._read_metadata(path)

    def _read_metadata(self, path) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("m2kd.format") != ONNX_FORMAT:
            raise DataError(f"{path}: not an m2kd ONNX export (no {ONNX_FORMAT} metadata)")
        self.spec = InputSpec.from_json(meta["m2kd.input_spec"])
        self.uint8_input = meta["m2kd.input_format"] == "uint8_nhwc"
        self.all_steps = meta["m2kd.step"] == "all"
        self.checksum = meta["m2kd.bundle_checksum"]
        classes = json.loads(meta["m2kd.classes"])
        if self.all_steps:
            self.classes_by_step = classes
            self.steps = len(classes)
        else:
            self.steps = int(meta["m2kd.step"])
            self.classes_by_step = None
            self.step_classes = classes

    def classes(self, step: int | None = None) -> list[str]:
        if not self.all_steps:
            if step is not None and checked_step(step, self.steps, "the graph") != self.steps:
                raise ConfigError(f"this graph holds only step {self.steps}; export with "
                                  "--step all to choose steps at run time")
            return self.step_classes
        step = checked_step(step, self.steps, "the graph")
        return [c for rec in self.classes_by_step[:step] for c in rec]

    def logits(self, pixels: torch.Tensor, step: int | None = None) -> np.ndarray:
        """pixels: (N, C, H, W) floats in [0, 1]."""
        names = self.classes(step)  # validates the step before running anything
        if self.uint8_input:
            x = (pixels.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
        else:
            x = normalise(pixels, self.spec)
        feed = {"input": x.contiguous().numpy()}
        if self.all_steps:
            step = checked_step(step, self.steps, "the graph")
            feed["step"] = np.array([step], dtype=np.int64)
        return self.session.run(["logits"], feed)[0][:, :len(names)]

    def predict(self, pixels: torch.Tensor, top_k: int = 5, step: int | None = None
                ) -> list[Prediction]:
        names = self.classes(step)
        logits = torch.from_numpy(self.logits(pixels, step)).float()
        scores, index = torch.softmax(logits, dim=1).topk(max(1, min(top_k, len(names))), dim=1)
        return [Prediction([names[i] for i in row_i], row_s)
                for row_s, row_i in zip(scores.tolist(), index.tolist())]
