"""Rebuild the model of any step from a bundle (M2KD Eq. 7-8) and check its probe."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbones import ResNet, create_backbone
from .bundle import Bundle
from .owner_masks import visible
from .step_number import checked_step

PROBE_TOLERANCE = 1e-5  # invariant 2: fp32 max abs diff


def check_step(bundle: Bundle, step: int | None) -> int:
    """`step` (None: the last) if the bundle has it, else a ConfigError naming the range."""
    return checked_step(step, bundle.num_steps)


def model_of_step(bundle: Bundle, step: int | None = None, device: str | torch.device = "cpu"
                  ) -> ResNet:
    """Backbone weights `W * (1 <= M <= step)`, BatchNorm and heads of `step`; in eval mode.

    `step=None` means the last step, the one inference uses.
    """
    step = check_step(bundle, step)
    record = bundle.steps[step - 1]
    model = create_backbone(bundle.arch, len(bundle.classes_up_to(step)),
                            bundle.input_spec.channels)
    state = {name: w * visible(bundle.masks[name], step) for name, w in bundle.weights.items()}
    state.update(record.batchnorm)
    state.update({f"head.{k}": v for k, v in record.head.items()})
    state.update({f"aux_head.{k}": v for k, v in record.aux_head.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    return model.to(device).eval()


@dataclass
class ProbeCheck:
    step: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PROBE_TOLERANCE


@torch.no_grad()
def check_probes(bundle: Bundle) -> list[ProbeCheck]:
    """Rebuild every step on CPU in fp32 and compare its logits with the stored probe."""
    checks = []
    for k, record in enumerate(bundle.steps, start=1):
        logits = model_of_step(bundle, k)(record.probe_input).logits
        checks.append(ProbeCheck(k, float((logits - record.probe_logits).abs().max())))
    return checks
