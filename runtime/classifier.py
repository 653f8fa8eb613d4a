"""How a bundle classifies: the scorer of a step, used by every inference path.

The bundle's `classifier` metadata says which:

- `{"kind": "head"}`: the step's head on the step's own features (v1 bundles, the paper);
- `{"kind": "fecam", "space": "base+own", "beta", "g1", "g2"}` (`--classifier stats`, the
  default): the sum of two FeCAM scores (runtime/stats_classifier.py) per class, one on
  the features of snapshot 1 with every class's statistics in that space, one on the
  features of the class's own snapshot (the step that learned it) with its statistics
  there. Both snapshots are rebuilt exactly from the bundle, so no statistic goes stale;
  a step k scorer runs snapshots 1..k (k forward passes);
- `{"kind": "fecam", "space": "base", ...}` (`--classifier stats-base`): the first term
  alone; one forward pass of snapshot 1, the cost of a plain model;
- `{"kind": "lda" | "pseudo", "space": "base", ...}`: a linear head on snapshot 1's
  features computed from the statistics when the bundle loads (runtime/linear_from_stats.py):
  closed-form LDA, or softmax fitted on balanced Gaussian pseudo-features. One pass.

docs/methods.md records the measurement that chose the default (SEED-style combination of
per-snapshot scores; FeCAM's distances are in units of each space's typical
within-class distance, which makes the scores of different spaces comparable).

`scorer_of_step(bundle, k)` returns a module mapping normalised images to scores
(N, classes of steps 1..k): the logits of inference, the ONNX graphs and the server.
"""

from __future__ import annotations

import torch
from torch import nn

from .bundle import Bundle
from .class_stats import TUKEY_BETA, ClassStats
from .classifier_option import CLASSIFIERS
from .errors import BundleFormatError, ConfigError
from .linear_from_stats import LinearOnStats, lda_head, pseudo_feature_head
from .reconstruct import check_step, model_of_step
from .stats_classifier import FeCAM

SPACES = ("base", "base+own")
LINEAR_KINDS = ("lda", "pseudo")  # a linear head on snapshot 1, fitted per step


def classifier_config(kind: str) -> dict:
    """The bundle metadata for `--classifier` (runtime/classifier_option.py)."""
    if kind == "head":
        return {"kind": "head"}
    if kind == "lda":
        return {"kind": "lda", "space": "base", "beta": TUKEY_BETA, "shrinkage": 1.0}
    if kind == "pseudo":
        return {"kind": "pseudo", "space": "base", "beta": TUKEY_BETA, "per_class": 256,
                "seed": 0}
    if kind in ("stats", "stats-base"):
        space = "base+own" if kind == "stats" else "base"
        return {"kind": "fecam", "space": space, "beta": TUKEY_BETA, "g1": 1.0, "g2": 1.0}
    raise ConfigError(f"unknown classifier {kind!r}; choose {', '.join(CLASSIFIERS)}")


def describe_classifier(spec: dict) -> str:
    if spec.get("kind") == "head":
        return "the sigmoid head of the last step"
    if spec.get("kind") in ("lda", "pseudo"):
        what = "LDA" if spec["kind"] == "lda" else "a softmax head fitted on pseudo-features"
        return f"{what} from class statistics in the base snapshot's space"
    if spec.get("space") == "base+own":
        return (f"{spec.get('kind')} on class statistics in the base snapshot's space plus "
                "each class's own snapshot's space")
    return f"{spec.get('kind')} on class statistics in the {spec.get('space')} snapshot's space"


def feature_steps(bundle: Bundle, step: int) -> list[int]:
    """The snapshots whose features the classifier of `step` reads, in the order it takes them."""
    spec = bundle.classifier
    if spec.get("kind") == "head":
        return [step]
    return list(range(1, step + 1)) if spec.get("space") == "base+own" else [1]


def stats_up_to(bundle: Bundle, step: int, space: str = "base") -> ClassStats:
    """Statistics of every class of steps 1..step in `space`, in head order."""
    return ClassStats.concat([own_stats(bundle, k, space) for k in range(1, step + 1)])


def own_stats(bundle: Bundle, k: int, space: str = "own") -> ClassStats:
    """Statistics of the classes step k learned, in `space` ("own" of step 1 is "base")."""
    space = "base" if space == "own" and k == 1 else space
    stats = bundle.steps[k - 1].stats
    if space not in stats:
        raise BundleFormatError(f"step {k} has no class statistics in space {space!r}; "
                                "this bundle can only classify with its head")
    return stats[space]


class BaseOwnFeCAM(nn.Module):
    """FeCAM in the base space for every class + FeCAM in each class's own space.

    Takes the features of snapshots 1..k; each own-space FeCAM sets its distance unit
    from its own classes, so every term is in units of its space's within-class distance.
    """

    def __init__(self, base: FeCAM, own: list[FeCAM]):
        super().__init__()
        self.base = base
        self.own = nn.ModuleList(own)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        own = torch.cat([fecam(f) for fecam, f in zip(self.own, features)], dim=1)
        return self.base(features[0]) + own


class OnBase(nn.Module):
    """A classifier of the features of snapshot 1 (given as a list of one tensor)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(features[0])


def _linear_on_base(spec: dict, stats: ClassStats) -> OnBase:
    if spec["kind"] == "lda":
        weight, bias = lda_head(stats, float(spec["shrinkage"]))
    else:
        weight, bias = pseudo_feature_head(stats, int(spec["per_class"]), seed=int(spec["seed"]))
    return OnBase(LinearOnStats(weight, bias, float(spec["beta"])))


def build_classifier(bundle: Bundle, step: int) -> nn.Module | None:
    """The statistics classifier of `step` (taking `feature_steps`' features), or None when
    the head classifies."""
    spec = bundle.classifier
    if spec.get("kind") == "head":
        return None
    if spec.get("kind") in LINEAR_KINDS and spec.get("space") == "base":
        return _linear_on_base(spec, stats_up_to(bundle, step, "base"))
    if spec.get("kind") != "fecam" or spec.get("space") not in SPACES:
        raise BundleFormatError(f"unknown classifier {spec!r} in the bundle metadata")
    beta, g1, g2 = float(spec["beta"]), float(spec["g1"]), float(spec["g2"])
    base = FeCAM(stats_up_to(bundle, step, "base"), beta, g1, g2,
                 scale_classes=len(bundle.steps[0].classes))
    if spec["space"] == "base":
        return OnBase(base)
    own = [FeCAM(own_stats(bundle, k), beta, g1, g2) for k in range(1, step + 1)]
    return BaseOwnFeCAM(base, own)


class StepScorer(nn.Module):
    """Normalised images -> scores over the classes of one step."""

    def __init__(self, models: list[nn.Module], classifier: nn.Module | None):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            return self.models[0](x).logits
        return self.classifier([m(x).features.float() for m in self.models])


def scorer_of_step(bundle: Bundle, step: int | None = None, device: str | torch.device = "cpu",
                   snapshots: list[Bundle] | None = None) -> StepScorer:
    """`snapshots[j - 1]`: the bundle after step j, for methods that do not pack their
    steps (then only the last step rebuilds from `bundle` itself)."""
    step = check_step(bundle, step)
    models = [model_of_step(snapshots[j - 1] if snapshots and j != step else bundle, j)
              for j in feature_steps(bundle, step)]
    return StepScorer(models, build_classifier(bundle, step)).to(device).eval()
