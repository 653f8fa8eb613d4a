"""The one rule for a requested step: None means the last, anything else must be an
integer (not a bool, not a float) in 1..K. Shared by the torch and ONNX backends."""

from __future__ import annotations

from .errors import ConfigError


def checked_step(step, n_steps: int, holder: str = "the bundle") -> int:
    if step is None:
        return n_steps
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= n_steps:
        raise ConfigError(f"step {step!r} does not exist; {holder} has steps 1..{n_steps}")
    return step
