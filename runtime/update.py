"""On-device class addition: one exemplar-free M2KD step from image folders.

Only the new classes' images are read (invariant 3). Everything is checked
before training starts, so a refusal writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .bundle import MAX_STEPS, Bundle
from .engine import StepConfig, StepData, StepReport, run_step
from .errors import CapacityError, ConfigError, DataError
from .folders import read_class_folders
from .images import normalise
from .m2kd import M2KD, PASS_WEIGHTS, M2KDConfig
from .method_option import ON_DEVICE_METHODS

# The papers' M2KD leaves the sigmoid head of later steps near fine-tuning (MNIST B2:
# 38.3 over nine seeds); PASS's two terms on top make it learn (83.0). The statistics
# classifiers do not read the head and gain nothing from them (stats-base 93.2 either
# way; docs/methods.md), so by default they keep the cheaper step.


@dataclass
class NewClasses:
    names: list[str]
    images: torch.Tensor  # normalised (N, C, H, W)
    labels: torch.Tensor  # 0..len(names)-1


def read_new_classes(bundle: Bundle, folder: str | Path, skip_bad: bool = False,
                     **warn) -> NewClasses:
    """Read `folder/<class>/*` in the bundle's input spec and refuse known class names.
    `warn`: how ignored files and one-image classes are reported (default: warnings)."""
    names, pixels, labels = read_class_folders(folder, bundle.input_spec, skip_bad, **warn)
    refuse_known_classes(bundle, names)
    return NewClasses(names, normalise(pixels, bundle.input_spec), labels)


def refuse_known_classes(bundle: Bundle, names: list[str]) -> None:
    clash = sorted(set(names) & set(bundle.classes))
    if clash:
        raise DataError(f"class(es) already in the bundle: {', '.join(clash)}; "
                        "use a different name to add a different class")


def check_capacity(bundle: Bundle, prune_ratio: float) -> None:
    """Refuse a step that could not own a single weight in some layer."""
    if bundle.num_steps >= MAX_STEPS:
        raise CapacityError(f"the bundle already has {MAX_STEPS} steps, the format's maximum")
    for name, mask in bundle.masks.items():
        n_free = int((mask == 0).sum())
        if round((1.0 - prune_ratio) * n_free) < 1:
            overall = sum(int((m == 0).sum()) for m in bundle.masks.values())
            total = sum(m.numel() for m in bundle.masks.values())
            raise CapacityError(
                f"too little free capacity for another step: layer {name} has {n_free} free "
                f"weights ({100 * overall / total:.2f}% free overall); see `m2kd inspect`, or "
                "lower --prune-ratio")


def method_for(bundle: Bundle, classifier: str, method: str | None = None) -> str:
    """`method`, or by default m2kd_pass where the step's classifier is the sigmoid head
    (which needs it to learn) and m2kd otherwise. PASS samples the old classes from
    their statistics, which bundles written before v2 lack."""
    has_stats = bundle.has_class_statistics
    if method is None:
        return "m2kd_pass" if classifier == "head" and has_stats else "m2kd"
    if method not in ON_DEVICE_METHODS:
        raise ConfigError(f"unknown on-device method {method!r}; choose one of "
                          f"{', '.join(ON_DEVICE_METHODS)}")
    if method == "m2kd_pass" and not has_stats:
        raise ConfigError("m2kd_pass needs the old classes' statistics, which this bundle "
                          "(written before format v2) lacks; use --method m2kd")
    return method


def build_method(name: str) -> M2KD:
    config = M2KDConfig(**PASS_WEIGHTS) if name == "m2kd_pass" else M2KDConfig()
    return M2KD(config, name)


def add_classes(bundle: Bundle, new: NewClasses, config: StepConfig, method: str | None = None
                ) -> tuple[Bundle, StepReport]:
    """Run one exemplar-free step that appends `new.names` to `bundle`: `method` (one of
    ON_DEVICE_METHODS; default: `method_for`'s choice for the step's classifier)."""
    name = method_for(bundle, config.classifier, method)
    if config.prune_ratio is None:
        raise ConfigError("on-device steps must prune, or later steps could not rebuild them")
    check_capacity(bundle, config.prune_ratio)
    data = StepData(new.images, new.labels + len(bundle.classes))
    return run_step(bundle, data, new.names, build_method(name), config)
