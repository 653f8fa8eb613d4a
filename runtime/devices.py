"""Device choice: `auto` picks CUDA when it is really usable, else the CPU."""

from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was requested but CUDA is not available here; "
                              "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} does not exist "
                              f"({torch.cuda.device_count()} CUDA devices)")
    elif device.type != "cpu":
        raise DeviceError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


def fast_memory_format(device: torch.device) -> torch.memory_format:
    """The layout convolutions run fastest in on `device`: channels-last on the CPU, where
    oneDNN trains about 1.2x and infers about 1.7x faster in it than in NCHW; NCHW on CUDA,
    where channels-last trained 0.91x as fast on an H100 (`benchmarks/memory_format.py`,
    `benchmarks/results/cost/memory_format-*.txt`). Only the speed differs: the results
    agree to float rounding."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def inference_batch_size(device: torch.device) -> int:
    """Images per forward pass for no-grad work (teacher scores, class statistics): 64
    on the CPU, where a teacher of the 8-layer ResNet ran its 400 images 1.3x faster in
    batches of 64 than of 256 (two cores, channels-last; the activations stay in cache);
    256 on CUDA, where larger batches keep the GPU busy."""
    return 64 if device.type == "cpu" else 256
