"""Rotations as extra classes in the base step (self-supervised label augmentation).

PASS (Zhu et al., CVPR 2021, Sec. 3.3) trains every class together with its copies
rotated by 90, 180 and 270 degrees, each as a class of its own, so that the features
describe more than what separates the base classes. Exemplar-free methods that build
their classifier on a frozen or slowly moving representation (PASS, FeTrIL, FeCAM's
base training, EFC) depend on exactly that. Here it is used in the base step only
(the model shipped; no teacher needs it): the 3 x C rotation classes are dropped when
the step ends, so the bundle, its heads, probes and class statistics hold the C real
classes, computed from the unrotated images. Later steps (on the device) are unchanged.
Measured in docs/methods.md ("What the base model learns").
"""

from __future__ import annotations

import torch

from .errors import ConfigError

QUARTER_TURNS = (1, 2, 3)


def with_rotations(images: torch.Tensor, labels: torch.Tensor, n_classes: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and their rotations; the copy turned `QUARTER_TURNS[i]` quarter turns
    is labelled `label + (i + 1) * n_classes`."""
    if images.shape[-1] != images.shape[-2]:
        raise ConfigError(f"rotations in the base step need square images, not "
                          f"{images.shape[-2]}x{images.shape[-1]}; turn them off "
                          "(--no-base-rotations)")
    turned = [torch.rot90(images, r, dims=(2, 3)) for r in QUARTER_TURNS]
    relabelled = [labels + (i + 1) * n_classes for i in range(len(QUARTER_TURNS))]
    return torch.cat([images, *turned]), torch.cat([labels, *relabelled])


def rotation_names(classes: list[str]) -> list[str]:
    return [f"{c}@{90 * r}" for r in QUARTER_TURNS for c in classes]

