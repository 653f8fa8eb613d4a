"""How a bundle classifies: the scorer of a step, used by every inference path.

The bundle's `classifier` metadata says which:

- `{"kind": "head"}`: the step's head on the step's own features (v1 bundles, the paper);
- `{"kind": "fecam", "space": "base", "beta", "g1", "g2"}`: FeCAM (runtime/stats_classifier.py)
  on the features of snapshot 1, rebuilt exactly from the bundle, with the class
  statistics every step stored in that space. Statistics in an exact snapshot never go
  stale; docs/methods.md records the measurement that chose this default.

`scorer_of_step(bundle, k)` returns a module mapping normalised images to scores
(N, classes of steps 1..k): the logits of inference, the ONNX graphs and the server.
"""

from __future__ import annotations

import torch
from torch import nn

from .bundle import Bundle
from .class_stats import TUKEY_BETA, ClassStats
from .errors import BundleFormatError, ConfigError
from .reconstruct import check_step, model_of_step
from .stats_classifier import FeCAM

FECAM_BASE = {"kind": "fecam", "space": "base", "beta": TUKEY_BETA, "g1": 1.0, "g2": 1.0}


def classifier_config(kind: str) -> dict:
    """The bundle metadata for `--classifier head|stats` (stats: FeCAM in the base space)."""
    if kind == "head":
        return {"kind": "head"}
    if kind == "stats":
        return dict(FECAM_BASE)
    raise ConfigError(f"unknown classifier {kind!r}; choose head or stats")


def describe_classifier(spec: dict) -> str:
    if spec.get("kind") == "head":
        return "the sigmoid head of the last step"
    return f"{spec.get('kind')} on class statistics in the {spec.get('space')} snapshot's space"


def feature_step(bundle: Bundle, step: int) -> int:
    """The snapshot whose features the classifier of `step` reads."""
    return 1 if bundle.classifier.get("kind") == "fecam" else step


def stats_up_to(bundle: Bundle, step: int, space: str = "base") -> ClassStats:
    """Statistics of every class of steps 1..step in `space`, in head order."""
    parts = []
    for k, rec in enumerate(bundle.steps[:step], start=1):
        if space not in rec.stats:
            raise BundleFormatError(f"step {k} has no class statistics in space {space!r}; "
                                    "this bundle can only classify with its head")
        parts.append(rec.stats[space])
    return ClassStats.concat(parts)


def build_classifier(bundle: Bundle, step: int) -> nn.Module | None:
    """The statistics classifier of `step`, or None when the head classifies."""
    spec = bundle.classifier
    if spec.get("kind") == "head":
        return None
    if spec.get("kind") != "fecam" or spec.get("space") != "base":
        raise BundleFormatError(f"unknown classifier {spec!r} in the bundle metadata")
    return FeCAM(stats_up_to(bundle, step, "base"), float(spec["beta"]), float(spec["g1"]),
                 float(spec["g2"]), scale_classes=len(bundle.steps[0].classes))


class StepScorer(nn.Module):
    """Normalised images -> scores over the classes of one step."""

    def __init__(self, model: nn.Module, classifier: nn.Module | None):
        super().__init__()
        self.model = model
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.classifier is None:
            return out.logits
        return self.classifier(out.features.float())


def scorer_of_step(bundle: Bundle, step: int | None = None, device: str | torch.device = "cpu",
                   snapshots: list[Bundle] | None = None) -> StepScorer:
    """`snapshots[j - 1]`: the bundle after step j, for methods that do not pack their
    steps (then only the last step rebuilds from `bundle` itself)."""
    step = check_step(bundle, step)
    j = feature_step(bundle, step)
    model = model_of_step(snapshots[j - 1] if snapshots and j != step else bundle, j)
    return StepScorer(model, build_classifier(bundle, step)).to(device).eval()
