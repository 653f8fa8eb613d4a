"""The Python API: `Runtime.load(path)`, `.predict(...)`, `.save(path)`."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch

from .bundle import Bundle, load_bundle, save_bundle
from .devices import resolve_device
from .engine import StepConfig, StepReport
from .errors import BundleIntegrityError, DataError
from .images import to_model_input
from .inference import Prediction, predict_batch
from .classifier import scorer_of_step, with_classifier
from .reconstruct import ProbeCheck, check_probes, check_step
from .update import NewClasses, add_classes, read_new_classes, refuse_known_classes

CACHED_STEPS = 4  # rebuilt steps kept by Runtime.scorer (least recently used dropped)


class Runtime:
    """A loaded bundle, ready to predict (and, see `add_classes`, to learn)."""

    def __init__(self, bundle: Bundle, device: str = "auto"):
        self.bundle = bundle
        self.device = resolve_device(device)
        # Rebuilt, BatchNorm-folded scorers of the steps served most recently (LRU);
        # `add_classes` clears it, a reload makes a new Runtime.
        self._models: OrderedDict[int, torch.nn.Module] = OrderedDict()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", verify: bool = True
             ) -> Runtime:
        """Load and validate a bundle; `verify` also rebuilds every step and checks its probe."""
        bundle = load_bundle(path)
        if verify:
            verify_bundle(bundle, str(path))
        return cls(bundle, device)

    def using_classifier(self, kind: str | None) -> Runtime:
        """This bundle classifying with `kind` instead of its own choice (None: itself);
        e.g. "pseudo" serves any step at one plain model's cost."""
        return self if kind is None else Runtime(with_classifier(self.bundle, kind),
                                                 str(self.device))

    @property
    def steps(self) -> int:
        return self.bundle.num_steps

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    def scorer(self, step: int | None = None) -> torch.nn.Module:
        """The module inference runs for `step` (default: the last): images -> scores."""
        step = check_step(self.bundle, step)
        if step in self._models:
            self._models.move_to_end(step)
        else:
            self._models[step] = scorer_of_step(self.bundle, step, self.device, fold=True)
            while len(self._models) > CACHED_STEPS:
                self._models.popitem(last=False)
        return self._models[step]

    def predict(self, images, top_k: int = 5, step: int | None = None) -> list[Prediction]:
        """Top-k classes for PIL images, uint8 numpy arrays, or an (N, C, H, W) float tensor
        that is already normalised. `step` picks an earlier model (default: the last)."""
        step = check_step(self.bundle, step)
        scorer = self.scorer(step)
        x = to_model_input(images, self.bundle.input_spec)
        classes = self.bundle.classes_up_to(step)
        return predict_batch(scorer, classes, x, top_k, self.device)

    def add_classes(self, new, epochs: int = 15, lr: float = 0.1, batch_size: int = 64,
                    prune_ratio: float = 0.75, seed: int = 0, skip_bad: bool = False,
                    progress: bool = False, method: str | None = None,
                    **step_options) -> StepReport:
        """Learn new classes without any old data (one M2KD step) and keep them in memory;
        call `save` to write the bundle.

        `new` is a folder with one sub-folder of images per class, or a mapping from
        class name to images (anything `predict` accepts). `method`: "m2kd" or
        "m2kd_pass" (default: m2kd_pass for the classifier "head", else m2kd).
        """
        classes = (read_new_classes(self.bundle, new, skip_bad)
                   if isinstance(new, (str, os.PathLike)) else self._new_from_mapping(new))
        config = StepConfig(epochs=epochs, lr=lr, batch_size=batch_size, prune_ratio=prune_ratio,
                            seed=seed, device=str(self.device), progress=progress,
                            **step_options)
        self.bundle, report = add_classes(self.bundle, classes, config, method)
        self._models.clear()
        return report

    def _new_from_mapping(self, mapping) -> NewClasses:
        names, images, labels = [], [], []
        for label, (name, items) in enumerate(mapping.items()):
            x = to_model_input(items, self.bundle.input_spec)
            names.append(str(name))
            images.append(x)
            labels.append(torch.full((len(x),), label, dtype=torch.long))
        if not names:
            raise DataError("no new classes given")
        refuse_known_classes(self.bundle, names)
        return NewClasses(names, torch.cat(images), torch.cat(labels))

    def save(self, path: str | os.PathLike) -> str:
        """Write the bundle atomically; returns its checksum."""
        return save_bundle(self.bundle, Path(path))


def verify_bundle(bundle: Bundle, name: str = "bundle") -> list[ProbeCheck]:
    """Rebuild every step and check its probe; raise naming the first step that fails."""
    checks = check_probes(bundle)
    raise_on_mismatch(checks, name)
    return checks


def raise_on_mismatch(checks: list[ProbeCheck], name: str = "bundle") -> None:
    for check in checks:
        if not check.ok:
            raise BundleIntegrityError(
                f"{name}: step {check.step} does not reconstruct (probe max abs diff "
                f"{check.max_abs_diff:.3g} > 1e-5)")
