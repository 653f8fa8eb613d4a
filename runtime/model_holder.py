"""The served model, swapped atomically when its file is replaced.

A reload loads and verifies the new file in a background thread; only a model
that passed is swapped in, by one reference assignment, so a batch that already
took the old model finishes on it. A failed reload keeps the old model serving
and is reported in `/v1/model` and the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .classifier_option import check_override_backend
from .errors import M2KDError
from .inference import Prediction

log = logging.getLogger("m2kd.serve")


@dataclass(frozen=True)
class ServedModel:
    """One loaded model and what a response must say about it."""

    predict: object  # callable(pixels (N, C, H, W) in [0, 1], top_k, step) -> [Prediction]
    spec: object  # InputSpec
    steps: int
    classes: list[str]
    checksum: str
    backend: str
    device: str
    classifier: str  # the `--classifier` name in use, or "graph" (built into an ONNX graph)


def load_served_model(path: Path, backend: str, device: str, classifier: str | None = None
                      ) -> ServedModel:
    """`classifier`: the bundle's own choice overridden (runtime/classifier.py); the
    checksum stays the file's."""
    check_override_backend(classifier, backend)
    if backend == "onnxruntime":
        from .onnx_backend import OnnxModel

        model = OnnxModel(path, device)
        return ServedModel(model.predict, model.spec, model.steps, model.classes(),
                           model.checksum, "onnxruntime", model.device, "graph")
    from .api import Runtime
    from .classifier import classifier_name
    from .images import normalise

    loaded = Runtime.load(path, device=device, verify=True)
    runtime = loaded.using_classifier(classifier)
    spec = runtime.bundle.input_spec

    def predict(pixels: torch.Tensor, top_k: int, step: int | None) -> list[Prediction]:
        return runtime.predict(normalise(pixels, spec), top_k=top_k, step=step)

    return ServedModel(predict, spec, runtime.steps, runtime.classes,
                       loaded.bundle.checksum(), "torch", str(runtime.device),
                       classifier_name(runtime.bundle.classifier))


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ModelHolder:
    def __init__(self, path: Path, backend: str, device: str, metrics=None,
                 classifier: str | None = None):
        self.path, self.backend, self.device = Path(path), backend, device
        self.metrics, self.classifier = metrics, classifier
        self.current = self._load()  # fail fast at start
        self._signature = _signature(self.path)
        self.last_reload_error: str | None = None
        self.last_reload_at: float | None = None
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Load and verify the file now; swap only on success. Thread-safe."""
        with self._lock:
            signature = _signature(self.path)
            try:
                model = self._load()
            except (M2KDError, OSError) as e:
                self.last_reload_error = str(e)
                log.error("reload of %s failed, still serving %s: %s", self.path,
                          self.current.checksum[:19], e)
                self._count("failed")
                self._signature = signature  # do not retry the same broken file forever
                return False
            self.current = model  # the atomic swap
            self._signature = signature
            self.last_reload_error = None
            self.last_reload_at = time.time()
            log.info("now serving %s (%d steps)", model.checksum[:19], model.steps)
            self._count("ok")
            return True

    def _load(self) -> ServedModel:
        return load_served_model(self.path, self.backend, self.device, self.classifier)

    def changed(self) -> bool:
        signature = _signature(self.path)
        return signature is not None and signature != self._signature

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.reloads.labels(result=result).inc()


def watch_interval() -> float:
    return float(os.environ.get("M2KD_WATCH_SECONDS", "0.5"))
