"""Baselines without distillation: fine-tuning (lower bound) and joint training (upper bound).

Both use the same sigmoid BCE classifier as LwF-MC and M2KD, so that only the
old-class targets differ between methods.
"""

from __future__ import annotations

import torch

from m2kd.runtime.backbones import BackboneOutput
from m2kd.runtime.engine import StepContext
from m2kd.runtime.losses import distillation_bce
from m2kd.runtime.teachers import Batch


class FineTune:
    """FT (M2KD Section 4.3): plain classification of the new data; old classes get
    target 0 on every new image, which is what makes FT forget."""

    name = "ft"
    reads_old_data = False
    head_only = True
    params: dict = {}

    def before_step(self, ctx: StepContext) -> None:
        pass

    def loss(self, ctx: StepContext, out: BackboneOutput, batch: Batch
             ) -> dict[str, torch.Tensor]:
        zeros = out.logits.new_zeros(len(batch.labels), 0)
        return {"loss": distillation_bce(out.logits, zeros, batch.labels,
                                         ctx.config.loss_reduction)}

    def after_step(self, ctx: StepContext) -> None:
        pass


class Joint(FineTune):
    """Training on every class seen so far: the upper bound. It READS OLD DATA by
    definition (the protocol hands it all seen classes' images)."""

    name = "joint"
    reads_old_data = True
