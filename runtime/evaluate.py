"""Accuracy of a bundle on a labelled image folder, split into old and new classes."""

from __future__ import annotations

from pathlib import Path

import torch

from .bundle import Bundle
from .errors import DataError
from .folders import read_class_folders
from .images import normalise
from .classifier import scorer_of_step
from .inference import run_in_batches


@torch.no_grad()
def folder_accuracy(bundle: Bundle, folder: str | Path, new_names: list[str],
                    device: torch.device) -> dict[str, float | None]:
    """Top-1 on `folder/<class>/*` for the classes that are old and the ones in `new_names`.

    A class the bundle does not know yet (a new class, before the step) counts as wrong.
    """
    names, pixels, labels = read_class_folders(folder, bundle.input_spec)
    unknown = sorted(set(names) - set(bundle.classes) - set(new_names))
    if unknown:
        raise DataError(f"{folder}: class(es) {', '.join(unknown)} are neither in the bundle "
                        "nor being added")
    scorer = scorer_of_step(bundle, None, device)
    logits = run_in_batches(scorer, normalise(pixels, bundle.input_spec), device)
    predicted = [bundle.classes[i] for i in logits.argmax(dim=1).tolist()]
    truth = [names[i] for i in labels.tolist()]
    correct = torch.tensor([p == t for p, t in zip(predicted, truth)])
    is_new = torch.tensor([t in new_names for t in truth])

    def acc(sel: torch.Tensor) -> float | None:
        return float(correct[sel].float().mean()) if sel.any() else None

    return {"old": acc(~is_new), "new": acc(is_new), "all": acc(torch.ones_like(is_new))}
