"""Teachers: which earlier model distils which old class, and their cached scores.

Teacher outputs depend only on the input. With a finite augmentation (none, or
horizontal flip) every (image, view) pair is known before training, so the
scores of all teachers are computed once per step (`TeacherCache`) instead of
running k-1 teacher forwards per batch per epoch. `LiveTeachers` is the naive
per-batch form, for the benchmark, the cache's test and shifted images.

The random shift (`augment="shift"`) is not finite: the teachers score the shifted
image the student sees, per batch (`LiveTeachers`; `StepConfig.live_teachers`), as
LwM's and PODNet's teachers do. Sessions 9-10 had them score the image unshifted, from
the cache (`teachers_see_shift=False`): one forward pass per image and step, but a
target that describes another image; the LwF-MC head was 3.1 points lower on MNIST B2
over nine seeds (docs/methods.md, "Teachers score the image the student sees").
"""

from __future__ import annotations

from dataclasses import dataclass

from collections.abc import Callable

import torch
from torch import nn

from .devices import fast_memory_format, inference_batch_size
from .fold_batchnorm import fold_batchnorm


@dataclass
class Batch:
    images: torch.Tensor  # augmented, on the training device
    labels: torch.Tensor
    index: torch.Tensor  # position of each image in the step's data
    view: torch.Tensor  # 0 = as is, 1 = horizontally flipped
    # the images in their view before the shift, when the teachers must not see it
    unshifted: torch.Tensor | None = None

    @property
    def teacher_images(self) -> torch.Tensor:
        """What the distilling teachers score: the student's image, or its unshifted
        form where the config asks for it (`StepConfig.teachers_see_shift`)."""
        return self.images if self.unshifted is None else self.unshifted


def apply_view(images: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    flipped = torch.flip(images, dims=(3,))
    return torch.where(view.view(-1, 1, 1, 1).bool(), flipped, images)


def shift_images(images: torch.Tensor, offsets: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each image moved by its own offset: pixel (r, c) takes the value at (r + dy,
    c + dx), `offsets` (N, 2) in [-max_shift, max_shift]; edge pixels fill what is
    uncovered."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, mode="replicate")
    start = offsets.to(images.device) + max_shift
    rows = start[:, 0, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = start[:, 1, None] + torch.arange(w, device=images.device)  # (N, W)
    picked = padded[torch.arange(n, device=images.device)[:, None, None], :,
                    rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return picked.permute(0, 3, 1, 2)


def assign_teachers(class_steps: list[int], current_step: int, policy: str = "all",
                    skip: int = 0) -> list[int]:
    """Teacher step for each old class.

    - "all": M2KD Eq. 2, the model of the step that introduced the class;
    - "last": LwF-MC Eq. 1, the model of the previous step for every class;
    - "all" with `skip=s` (M2KD Section 4.4, "skip1"/"skip2"): the first s models are
      not used; their classes are distilled from the next model instead.
    """
    last = current_step - 1
    if policy == "last":
        return [last for _ in class_steps]
    return [min(max(s, skip + 1), last) for s in class_steps]


def _columns_by_teacher(assignment: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for column, teacher in enumerate(assignment):
        groups.setdefault(teacher, []).append(column)
    return groups


class TeacherCache:
    """Sigmoid scores (main and auxiliary head) of each old class's teacher for every
    image of the step in every view: tensors of shape (views, N, n_old)."""

    def __init__(self, main: torch.Tensor, aux: torch.Tensor):
        self.main, self.aux = main, aux

    @classmethod
    @torch.no_grad()
    def build(cls, model_for: Callable[[int], nn.Module], assignment: list[int],
              images: torch.Tensor, n_views: int, device: torch.device,
              temperature: float = 1.0, scale: float = 1.0) -> TeacherCache:
        """`model_for(j)` gives a fresh copy of the frozen model of step j on `device`
        (the cache folds its BatchNorm into its convolutions: the same eval-mode
        function up to float rounding, one op fewer per layer); scores are
        `scale * sigmoid(logit / temperature)` (1 and 1: the paper's)."""
        n, n_old = images.shape[0], len(assignment)
        batch_size = inference_batch_size(device)
        main = torch.zeros(n_views, n, n_old, device=device)
        aux = torch.zeros_like(main)
        layout = fast_memory_format(device)
        for teacher_step, cols in _columns_by_teacher(assignment).items():
            teacher = fold_batchnorm(model_for(teacher_step)).to(memory_format=layout)
            for v in range(n_views):
                for start in range(0, n, batch_size):
                    x = images[start:start + batch_size].to(device, memory_format=layout)
                    view = torch.full((x.shape[0],), v, device=device)
                    out = teacher(apply_view(x, view))
                    rows = slice(start, start + x.shape[0])
                    t = temperature
                    main[v, rows, cols] = scale * torch.sigmoid(out.logits[:, cols] / t)
                    aux[v, rows, cols] = scale * torch.sigmoid(out.aux_logits[:, cols] / t)
            del teacher
        return cls(main, aux)

    def targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.main[batch.view, batch.index], self.aux[batch.view, batch.index]


class LiveTeachers:
    """Runs every teacher on every batch (the cost the cache avoids)."""

    def __init__(self, model_for: Callable[[int], nn.Module], assignment: list[int],
                 temperature: float = 1.0, scale: float = 1.0):
        self.groups = _columns_by_teacher(assignment)
        self.models = {t: model_for(t) for t in self.groups}
        self.n_old = len(assignment)
        self.temperature, self.scale = temperature, scale

    @torch.no_grad()
    def targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.teacher_images
        main = torch.zeros(images.shape[0], self.n_old, device=images.device)
        aux = torch.zeros_like(main)
        for teacher_step, cols in self.groups.items():
            out = self.models[teacher_step](images)  # bf16 under the step's autocast
            t = self.temperature
            main[:, cols] = self.scale * torch.sigmoid(out.logits[:, cols].float() / t)
            aux[:, cols] = self.scale * torch.sigmoid(out.aux_logits[:, cols].float() / t)
        return main, aux
