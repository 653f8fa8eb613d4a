"""Named protocols of the three papers, and presets on the data that ships here.

Epochs and learning rates are the papers' where they give them (M2KD: 80 epochs,
lr 2.0, batch 128; LwM: lr 0.01; PODNet: 50 base classes, 20 exemplars per
class); the CIFAR presets need `--root` with CIFAR-100 in torchvision's format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from m2kd.runtime.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    dataset: str
    base_classes: int
    increment: int
    order: str  # see orders.py; "seed:{seed}" orders follow the run's seed
    epochs: int
    lr: float
    batch_size: int = 128
    metric: str = "top1"  # the paper's headline metric
    exemplars_per_class: int = 0  # for exemplar methods (iCaRL, PODNet with memory)
    arch: str | None = None
    recipe: str = "default"  # engine.RECIPES: "default" (measured here) or "paper"
    train_per_class: int | None = None  # subsample the training set (None: all images)


PRESETS: dict[str, Preset] = {
    # Runs on these machines. B2: the papers' equal split, 5 steps of 2 classes. B6: the
    # on-device protocol, a large base (the shipped model) and two steps of 2 classes.
    "mnist": Preset("mnist5k", 2, 2, "seed:{seed}", 15, 0.1, 64, exemplars_per_class=20),
    "mnist-b6": Preset("mnist5k", 6, 2, "seed:{seed}", 15, 0.1, 64, exemplars_per_class=20),
    "digits": Preset("digits", 2, 2, "seed:{seed}", 15, 0.1, 64, exemplars_per_class=20),
    "digits-b6": Preset("digits", 6, 2, "seed:{seed}", 15, 0.1, 64, exemplars_per_class=20),
    # Fashion-MNIST (Debian's dataset-fashion-mnist), 500 training images per class so the
    # grids fit the 2-core machines; the full 10,000-image test set.
    "fashion": Preset("fashion-mnist", 2, 2, "seed:{seed}", 15, 0.1, 64,
                      exemplars_per_class=20, train_per_class=500),
    "fashion-b6": Preset("fashion-mnist", 6, 2, "seed:{seed}", 15, 0.1, 64,
                         exemplars_per_class=20, train_per_class=500),
    # M2KD Section 4: CIFAR-100 in class batches of 5, 10 and 20, top-1.
    **{f"m2kd-cifar100-{b}": Preset("cifar100", b, b, "seed:{seed}", 80, 2.0, arch="resnet32",
                                    recipe="paper")
       for b in (5, 10, 20)},
    # LwM: iCIFAR-100 in batches of 10, 20 and 50 (the paper uses ResNet-34; we use ResNet-32).
    **{f"lwm-cifar100-{b}": Preset("cifar100", b, b, "icarl1993", 10, 0.01, arch="resnet32",
                                   recipe="paper")
       for b in (10, 20, 50)},
    # PODNet: 50 base classes, then 1, 2, 5 or 10 per step, 20 exemplars per class.
    **{f"podnet-cifar100-50+{b}": Preset("cifar100", 50, b, "icarl1993", 160, 0.1,
                                         exemplars_per_class=20, arch="resnet32",
                                         recipe="paper")
       for b in (1, 2, 5, 10)},
}


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
