"""A step's private tensors (BatchNorm, heads, class statistics) at 16 bits, without
losing exactness.

The shared conv weights stay float32. What is private to a step is rounded to float16
values *in memory, when the step ends*, before anything reads it: the probes, the class
statistics (computed with the rounded model, then rounded themselves), the step's own
evaluation and, later, every teacher rebuilt from the bundle and every classifier
fitted from the statistics.
So the model the bundle rebuilds is the model that was measured, and the file can store
these tensors as float16 with no loss (bundle metadata `step_dtype`; in memory every
tensor stays float32). A tensor with a value beyond float16's range is left as it was
and stored as float32: the saver only narrows what round-trips bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

STEP_DTYPE = torch.float16
STEP_DTYPE_NAME = "float16"  # the bundle metadata value
BATCHNORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


@torch.no_grad()
def round_in_place(t: torch.Tensor) -> None:
    """`t` becomes the nearest float16 values, unless one of them would overflow."""
    rounded = t.to(STEP_DTYPE).to(t.dtype)
    if torch.isfinite(rounded).all():
        t.copy_(rounded)


def private_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor a step owns alone: BatchNorm affine and statistics, both heads."""
    tensors = [getattr(m, name) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
               for name in BATCHNORM_TENSORS]
    return tensors + [p for head in (model.head, model.aux_head) for p in head.parameters()]


def round_private_tensors(model: nn.Module) -> None:
    for t in private_tensors(model):
        round_in_place(t)


def narrowed(t: torch.Tensor) -> torch.Tensor:
    """The float16 form of a float32 tensor when it round-trips exactly, else `t`."""
    if t.dtype != torch.float32:
        return t
    half = t.to(STEP_DTYPE)
    return half if torch.equal(half.to(torch.float32), t) else t


def holds_16_bit_values(t: torch.Tensor) -> bool:
    """Whether every value of `t` is a float16 value (what `narrowed` stores at 16 bits)."""
    return narrowed(t).dtype == STEP_DTYPE


def widened(t: torch.Tensor) -> torch.Tensor:
    """A stored private tensor back in the in-memory dtype (float32)."""
    return t.to(torch.float32) if t.dtype == STEP_DTYPE else t
