"""LwM (Dhar et al. 2019): Learning without Memorizing.

L = L_C + beta * L_D + gamma * L_AD (Eq. 3). L_C + L_D is iCaRL's LwF-MC: sigmoid
BCE with one-hot targets on the new classes and the previous model's sigmoid
scores on the base classes (Eq. 1). L_AD (Eq. 6) is the L1 distance between the
L2-normalised, vectorised Grad-CAM maps (Eq. 4-5) of teacher and student on the
last conv stage, for the base class b the student scores highest.

The student's map is built with `create_graph=True`, so L_AD trains the
backbone (a detached map would train nothing). The teacher's map depends on b,
which the student picks each batch, so it is computed per batch (one teacher).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from m2kd.runtime.backbones import BackboneOutput
from m2kd.runtime.engine import StepContext
from m2kd.runtime.losses import bce_sum, one_hot, reduce_sum
from m2kd.runtime.teachers import Batch


@dataclass
class LwMConfig:
    beta: float = 1.0  # weight of L_D (the paper gives no value; 1 makes L_C + L_D LwF-MC)
    gamma: float = 1.0  # weight of L_AD


def grad_cam(score: torch.Tensor, feature_map: torch.Tensor, create_graph: bool
             ) -> torch.Tensor:
    """Grad-CAM (LwM Sec. 3.2): ReLU(sum_k GAP(d score / d A_k) * A_k), vectorised (N, H*W).

    `score` is the (N,) score of the chosen class per image.
    """
    grads = torch.autograd.grad(score.sum(), feature_map, create_graph=create_graph,
                                retain_graph=True)[0]
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((alpha * feature_map).sum(dim=1)).flatten(1)


def attention_distillation(teacher_map: torch.Tensor, student_map: torch.Tensor
                           ) -> torch.Tensor:
    """Eq. 6, averaged over the batch: sum_j |Q_t/||Q_t||_2 - Q_s/||Q_s||_2|."""
    diff = F.normalize(teacher_map, dim=1) - F.normalize(student_map, dim=1)
    return diff.abs().sum(dim=1).mean()


class LwM:
    name = "lwm"
    reads_old_data = False
    head_only = True

    def __init__(self, config: LwMConfig | None = None):
        self.config = config or LwMConfig()
        self.params = asdict(self.config)

    def before_step(self, ctx: StepContext) -> None:
        ctx.state["teacher"] = ctx.teacher_model(ctx.step - 1) if ctx.n_old else None

    def loss(self, ctx: StepContext, out: BackboneOutput, batch: Batch
             ) -> dict[str, torch.Tensor]:
        n, c = out.logits.shape
        reduction = ctx.config.loss_reduction
        targets = one_hot(batch.labels, c)
        teacher = ctx.state["teacher"]
        if teacher is None:
            l_c = reduce_sum(bce_sum(out.logits, targets), n, c, reduction)
            return {"loss": l_c, "classify": l_c}
        n_old = ctx.n_old
        t_out = teacher(batch.images)  # parameters of the teacher get no gradient below
        l_c = reduce_sum(bce_sum(out.logits[:, n_old:], targets[:, n_old:]), n, c, reduction)
        l_d = bce_sum(out.logits[:, :n_old], torch.sigmoid(t_out.logits[:, :n_old]).detach())
        l_d = reduce_sum(l_d, n, c, reduction)
        b = out.logits[:, :n_old].argmax(dim=1, keepdim=True).detach()
        student_map = grad_cam(out.logits.gather(1, b).squeeze(1), out.stages[-1], True)
        teacher_map = grad_cam(t_out.logits.gather(1, b).squeeze(1), t_out.stages[-1],
                               False).detach()
        # L_AD is per image; with the "mean" reduction the BCE terms are also divided by C,
        # and so is L_AD, to keep Eq. 3's balance for gamma.
        l_ad = attention_distillation(teacher_map, student_map)
        l_ad = l_ad / c if reduction == "mean" else l_ad
        total = l_c + self.config.beta * l_d + self.config.gamma * l_ad
        return {"loss": total, "classify": l_c, "distill": l_d, "attention": l_ad}

    def after_step(self, ctx: StepContext) -> None:
        ctx.state.pop("teacher", None)
