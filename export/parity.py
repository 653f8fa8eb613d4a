"""Parity of exported graphs with the torch runtime: a failing check is an error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from m2kd.runtime.bundle import Bundle
from m2kd.runtime.errors import M2KDError
from m2kd.runtime.classifier import scorer_of_step

FP32_TOLERANCE = 1e-4
# fp32 graphs: plus 2e-6 of the largest logit magnitude (about 16 float32 ulps there), as
# np.allclose's rtol: LDA on 112-d statistics reaches logits of several hundred, where
# onnxruntime's and torch's different summation orders alone differ by a few 1e-4.
FP32_RELATIVE = 2e-6
# fp16 graphs: logits may differ by up to 2 % of the largest logit magnitude (at least
# 0.05); top-1 must agree wherever the torch top-2 margin exceeds that tolerance.
FP16_RELATIVE = 0.02


class ParityError(M2KDError):
    """An exported graph does not reproduce the runtime's outputs."""


@dataclass
class ParityResult:
    step: int
    batch: int
    max_abs_diff: float


def _inputs(bundle: Bundle, step: int, seed: int = 0) -> list[torch.Tensor]:
    s = bundle.input_spec
    g = torch.Generator().manual_seed(seed + step)
    randoms = [torch.randn(b, s.channels, s.height, s.width, generator=g) for b in (1, 7)]
    return [bundle.steps[step - 1].probe_input] + randoms


def _session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def check_step_graph(bundle: Bundle, data: bytes, step: int, fp16: bool = False,
                     all_steps: bool = False) -> list[ParityResult]:
    """Compare scores and top-1 with the runtime's scorer on the probe and batches of 1, 7."""
    session = _session(data)
    torch_scorer = scorer_of_step(bundle, step)
    results = []
    for x in _inputs(bundle, step):
        with torch.no_grad():
            expected = torch_scorer(x).numpy()
        feed = {"input": x.numpy()}
        if all_steps:
            feed["step"] = np.array([step], dtype=np.int64)
        got = session.run(["logits"], feed)[0][:, :expected.shape[1]]
        diff = float(np.abs(got - expected).max())
        _check(step, x.shape[0], expected, got, diff, fp16)
        results.append(ParityResult(step, x.shape[0], diff))
    return results


def parity_tolerance(expected: np.ndarray, fp16: bool = False) -> float:
    """The largest logit difference a graph may have from the runtime's `expected`."""
    scale = float(np.abs(expected).max())
    return max(0.05, FP16_RELATIVE * scale) if fp16 else FP32_TOLERANCE + FP32_RELATIVE * scale


def _check(step, batch, expected, got, diff, fp16) -> None:
    tolerance = parity_tolerance(expected, fp16)
    if diff > tolerance:
        raise ParityError(f"step {step}, batch {batch}: ONNX logits differ by {diff:.3g} "
                          f"(tolerance {tolerance:.3g})")
    top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else None
    margin_ok = np.ones(len(expected), bool) if top2 is None or not fp16 \
        else (top2[:, 1] - top2[:, 0]) > tolerance
    same = expected.argmax(1) == got.argmax(1)
    if not same[margin_ok].all():
        raise ParityError(f"step {step}, batch {batch}: ONNX top-1 differs from the runtime")
