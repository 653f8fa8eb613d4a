"""M2KD (Zhou et al. 2019): multi-model and multi-level knowledge distillation.

Loss (Eq. 4): L = L_MMD + lambda * L_AD, where
- L_MMD (Eq. 2): BCE over all seen classes; each old class is matched to the
  sigmoid score of the model of the step that introduced it, new classes to
  their one-hot labels;
- L_AD (Eq. 3): the same multi-teacher distillation on the auxiliary head
  (pooled output of stage 2) plus alpha times a classification term over all
  classes.
Teachers are rebuilt from the bundle (Eq. 7-8) and their scores cached once
per step. The same object with `teachers="last"` and no auxiliary loss is
LwF-MC (Eq. 1), and the Section 4.4 ablations are further settings of it. Two terms
of PASS (Zhu et al. 2021) can be added to either: the old classes' pseudo-features as
the head's negatives and feature distillation (`M2KDConfig`; off by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .backbones import BackboneOutput
from .engine import StepContext
from .errors import ConfigError
from .losses import auxiliary_distillation, distillation_bce, feature_distillation
from .old_class_features import OldClassTerm
from .teachers import Batch, LiveTeachers, TeacherCache, assign_teachers


@dataclass
class M2KDConfig:
    alpha: float = 0.5  # weight of the auxiliary classification term (Eq. 3)
    lam: float = 1.0  # lambda, weight of L_AD (Eq. 4)
    teachers: str = "all"  # "all" (Eq. 2) or "last" (LwF-MC, Eq. 1)
    skip: int = 0  # Section 4.4 "skip1"/"skip2": first models replaced by the next one
    auxiliary: bool = True  # L_AD on or off
    # Remedies for over-confident teachers (not in the paper; defaults keep Eq. 2-3):
    # targets = target_scale * sigmoid(teacher_logit / temperature).
    temperature: float = 1.0
    target_scale: float = 1.0
    # PASS (Zhu et al. 2021), not in the M2KD paper; 0 keeps Eq. 4 as it is
    # (docs/methods.md, "PASS on top of the distillation"):
    # - `old_features`: weight of a BCE of the head on Gaussian pseudo-features of the old
    #   classes, one per image of the batch, one-hot targets: the new rows' only negatives
    #   without old images (PASS's prototype augmentation; runtime/old_class_features.py);
    # - `feature_distillation`: weight of the squared distance between the student's
    #   pooled features and the previous model's on the batch's images, summed over the
    #   features and averaged over the batch (PASS's knowledge distillation).
    old_features: float = 0.0
    feature_distillation: float = 0.0
    # How the previous model normalises for the feature distillation: "batch" (the
    # batch's statistics, as the training student does) or "running" (eval mode; PASS's
    # code and session 15's form). Against an eval-mode teacher the distance is not zero
    # even before the student changes: a batch of only the new classes has other
    # statistics than the running ones, and the distillation bends the student to undo
    # that, which is wrong in eval mode (docs/methods.md, "Feature distillation with the
    # batch's statistics").
    feature_statistics: str = "batch"

    def validate(self) -> None:
        if self.teachers not in ("all", "last"):
            raise ConfigError(f"teachers must be 'all' or 'last', got {self.teachers!r}")
        if self.alpha < 0 or self.lam < 0 or self.skip < 0:
            raise ConfigError("alpha, lambda and skip must be >= 0")
        if not 0 <= self.old_features < float("inf"):
            raise ConfigError("the weight of the old classes' pseudo-features must be >= 0")
        if not 0 <= self.feature_distillation < float("inf"):
            raise ConfigError("the weight of the feature distillation must be >= 0")
        if self.feature_statistics not in ("batch", "running"):
            raise ConfigError("feature_statistics must be 'batch' or 'running', got "
                              f"{self.feature_statistics!r}")
        if self.temperature <= 0 or not 0 < self.target_scale <= 1:
            raise ConfigError("temperature must be > 0 and target_scale in (0, 1]")


# PASS's two weights as `m2kd_pass` (trainer) and `m2kd add-classes --method m2kd_pass`
# use them: the first values tried, not tuned (MNIST B2 sigmoid head 83.0 +- 3.0 over
# nine seeds against 38.3 +- 8.6 without; docs/methods.md).
PASS_WEIGHTS = {"old_features": 0.5, "feature_distillation": 1.0}


class M2KD:
    """Exemplar-free distillation from every earlier model (or the last one)."""

    reads_old_data = False
    head_only = True

    def __init__(self, config: M2KDConfig | None = None, name: str = "m2kd"):
        self.config = config or M2KDConfig()
        self.config.validate()
        self.name = name
        self.params = asdict(self.config)

    def before_step(self, ctx: StepContext) -> None:
        ctx.state["teachers"] = None
        ctx.state["old"] = None
        ctx.state["feature_teacher"] = None
        if ctx.n_old == 0:
            return
        cfg = self.config
        assignment = assign_teachers(ctx.class_steps[:ctx.n_old], ctx.step, cfg.teachers,
                                     cfg.skip)
        if ctx.config.live_teachers:
            ctx.state["teachers"] = LiveTeachers(ctx.teacher_model, assignment,
                                                 cfg.temperature, cfg.target_scale)
        else:
            ctx.state["teachers"] = TeacherCache.build(
                ctx.teacher_model, assignment, ctx.data.images, ctx.config.n_views, ctx.device,
                temperature=cfg.temperature, scale=cfg.target_scale)
        if cfg.old_features > 0:
            ctx.state["old"] = OldClassTerm.for_step(ctx)
        if cfg.feature_distillation > 0:
            ctx.state["feature_teacher"] = feature_teacher(ctx.teacher_model(ctx.step - 1),
                                                           cfg.feature_statistics)

    def loss(self, ctx: StepContext, out: BackboneOutput, batch: Batch
             ) -> dict[str, torch.Tensor]:
        teachers = ctx.state["teachers"]
        if teachers is None:
            empty = out.logits.new_zeros(len(batch.labels), 0)
            old_main, old_aux = empty, empty
        else:
            old_main, old_aux = teachers.targets(batch)
        reduction = ctx.config.loss_reduction
        l_mmd = distillation_bce(out.logits, old_main, batch.labels, reduction)
        parts = {"mmd": l_mmd}
        total = l_mmd
        if self.config.auxiliary:
            l_ad = auxiliary_distillation(out.aux_logits, old_aux, batch.labels, self.config.alpha,
                                          reduction)
            parts["aux"] = l_ad
            total = total + self.config.lam * l_ad
        if ctx.state.get("old") is not None:
            parts["old"] = ctx.state["old"].loss(ctx, len(batch.labels), reduction)
            total = total + self.config.old_features * parts["old"]
        if teachers is not None and self.config.feature_distillation > 0:
            parts["features"] = feature_distillation(out.features,
                                                     self._previous_features(ctx, batch))
            total = total + self.config.feature_distillation * parts["features"]
        parts["loss"] = total
        return parts

    @staticmethod
    def _previous_features(ctx: StepContext, batch: Batch) -> torch.Tensor:
        """The previous model's pooled features of the batch's images (one forward pass
        per batch: with batch statistics they depend on the whole batch)."""
        with torch.no_grad():
            return ctx.state["feature_teacher"](batch.teacher_images).features

    def after_step(self, ctx: StepContext) -> None:
        for key in ("teachers", "old", "feature_teacher"):
            ctx.state.pop(key, None)


def feature_teacher(previous: nn.Module, statistics: str) -> nn.Module:
    """The previous model as feature distillation runs it. "batch": its BatchNorm
    normalises each batch by the batch's own statistics, as the training student's
    does, and never updates its running statistics (momentum 0); "running": eval mode."""
    if statistics == "running":
        return previous.eval()
    for module in previous.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    return previous.train()
