"""How a bundle classifies: the scorer of a step, used by every inference path.

The bundle's `classifier` metadata says which. Every statistics classifier reads the
features of snapshot 1 (the base space) and, with `"space": "base+own"`, also each
class's own snapshot (the step that learned it); both are rebuilt exactly from the
bundle, so no statistic goes stale. A step-k scorer with an own space runs snapshots
1..k (k forward passes); a base-only one runs snapshot 1 (the cost of a plain model).

- `stats-base` (the default; pseudo, base+fecam): log-softmax of a softmax head fitted
  on Gaussian pseudo-features of the base-space statistics + log-softmax of FeCAM in
  the same base space (one forward pass at any step);
- `stats` (pseudo, base+own): the same head + log-softmax of FeCAM in each class's own
  space (k passes at step k);
- `pseudo` (pseudo, base): the pseudo-feature head alone;
- `fecam` (fecam, base+own): FeCAM in the base space + FeCAM in each class's own space;
- `fecam-base` (fecam, base): FeCAM in the base space;
- `lda` (lda, base): closed-form LDA on the base-space statistics;
- `head` (head): the step's sigmoid head (v1 bundles, the papers).

docs/methods.md records the measurement that chose the default. FeCAM distances are
in units of each space's typical within-class distance (runtime/stats_classifier.py),
which makes the scores of different spaces comparable; the pseudo head and the own
FeCAM are combined as log-probabilities.

`scorer_of_step(bundle, k)` returns a module mapping normalised images to scores
(N, classes of steps 1..k): the logits of inference, the ONNX graphs and the server.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .backbones import BACKBONES
from .bundle import Bundle
from .class_stats import TUKEY_BETA, ClassStats, last_stage, statistics_features, \
    with_covariance_prior
from .classifier_option import CLASSIFIERS
from .devices import fast_memory_format
from .errors import BundleFormatError, ConfigError
from .fold_batchnorm import fold_batchnorm
from .linear_from_stats import PSEUDO_PER_CLASS, LinearOnStats, lda_head, pseudo_feature_head
from .reconstruct import check_step, model_of_step
from .stats_classifier import FeCAM

SPACES = ("base", "base+own", "base+fecam")
LINEAR_KINDS = ("lda", "pseudo")  # a linear head on snapshot 1, fitted per step
# cov_prior: pseudo-observations of the base classes' mean covariance added to every
# class's base-space covariance (`base_stats`); measured in docs/methods.md.
COV_PRIOR = 16.0
_FECAM = {"beta": TUKEY_BETA, "g1": 1.0, "g2": 1.0, "cov_prior": COV_PRIOR}
_PSEUDO = {"beta": TUKEY_BETA, "per_class": PSEUDO_PER_CLASS, "seed": 0, "g1": 1.0, "g2": 1.0,
           "cov_prior": COV_PRIOR}
_CONFIGS = {
    "stats-base": {"kind": "pseudo", "space": "base+fecam", **_PSEUDO},
    "stats": {"kind": "pseudo", "space": "base+own", **_PSEUDO},
    "pseudo": {"kind": "pseudo", "space": "base", **_PSEUDO},
    "fecam": {"kind": "fecam", "space": "base+own", **_FECAM},
    "fecam-base": {"kind": "fecam", "space": "base", **_FECAM},
    "lda": {"kind": "lda", "space": "base", "beta": TUKEY_BETA, "shrinkage": 1.0},
    "head": {"kind": "head"},
}


def classifier_config(kind: str) -> dict:
    """The bundle metadata for `--classifier` (runtime/classifier_option.py)."""
    if kind not in _CONFIGS:
        raise ConfigError(f"unknown classifier {kind!r}; choose {', '.join(CLASSIFIERS)}")
    return dict(_CONFIGS[kind])


def classifier_name(spec: dict) -> str:
    """The `--classifier` name of a bundle's classifier metadata ("custom" if none fits),
    with what an older bundle lacks: "NAME (no cov_prior)" (written before the covariance
    prior), "NAME (256 pseudo-features per class)" (before session 18's 1024)."""
    for name, config in _CONFIGS.items():
        older, notes = dict(spec), []
        if not older.get("cov_prior") and "cov_prior" in config:
            older["cov_prior"], notes = config["cov_prior"], notes + ["no cov_prior"]
        if "per_class" in config and older.get("per_class", config["per_class"]) \
                != config["per_class"]:
            notes.append(f"{older['per_class']} pseudo-features per class")
            older["per_class"] = config["per_class"]
        if older == config:
            return f"{name} ({', '.join(notes)})" if notes else name
    return "custom"


def with_classifier(bundle: Bundle, kind: str | None) -> Bundle:
    """`bundle` classifying with `kind` instead of its own choice (None: unchanged). The
    statistics are stored whatever the choice, so it can be made again when a bundle is
    served or exported, without training; a bundle without them can only use "head"."""
    if kind is None:
        return bundle
    chosen = replace(bundle, classifier=classifier_config(kind))
    _require_statistics(chosen)
    return chosen


def _require_statistics(bundle: Bundle) -> None:
    """Fail now, with `own_stats`' message, if a statistic the classifier reads is missing
    (reading them is enough; the classifier itself is fitted once, when a step is served)."""
    if bundle.classifier["kind"] == "head":
        return
    stats_up_to(bundle, bundle.num_steps, "base")
    if bundle.classifier["space"] == "base+own":
        stats_up_to(bundle, bundle.num_steps, "own")


def describe_classifier(spec: dict) -> str:
    kind = spec.get("kind")
    if kind == "head":
        return "the sigmoid head of the last step"
    what = {"lda": "LDA", "pseudo": f"a softmax head fitted on {spec.get('per_class')} "
            "pseudo-features per class", "fecam": "FeCAM"}.get(kind, kind)
    what = f"{what} from class statistics in the base snapshot's space"
    if spec.get("space") == "base+own":
        what += " + FeCAM in each class's own snapshot's space"
    if spec.get("space") == "base+fecam":
        what += " + FeCAM in the same space"
    if spec.get("cov_prior"):
        what += f" (covariance prior: {spec['cov_prior']:g} images of the base classes' mean)"
    return what


def feature_steps(bundle: Bundle, step: int) -> list[int]:
    """The snapshots whose features the classifier of `step` reads, in the order it takes them."""
    return snapshots_read(bundle.classifier, step)


def snapshots_read(spec: dict, step: int) -> list[int]:
    """`feature_steps` for a classifier config (the bundle's `classifier` metadata)."""
    if spec.get("kind") == "head":
        return [step]
    return list(range(1, step + 1)) if spec.get("space") == "base+own" else [1]


def stats_up_to(bundle: Bundle, step: int, space: str = "base") -> ClassStats:
    """Statistics of every class of steps 1..step in `space`, in head order."""
    return ClassStats.concat([own_stats(bundle, k, space) for k in range(1, step + 1)])


def base_stats(bundle: Bundle, step: int) -> ClassStats:
    """`stats_up_to(bundle, step, "base")` as the classifier reads them: with the config's
    `cov_prior` (absent in bundles written before it: 0), each covariance is drawn towards
    the mean covariance of the base step's classes, the best-estimated shape there is (a
    class added from a handful of images has no covariance of its own worth the name)."""
    stats = stats_up_to(bundle, step, "base")
    strength = float(bundle.classifier.get("cov_prior", 0))
    prior = own_stats(bundle, 1, "base").covariances().mean(0)
    return with_covariance_prior(stats, prior, strength)


def own_stats(bundle: Bundle, k: int, space: str = "own") -> ClassStats:
    """Statistics of the classes step k learned, in `space` ("own" of step 1 is "base")."""
    space = "base" if space == "own" and k == 1 else space
    stats = bundle.steps[k - 1].stats
    if space not in stats:
        raise BundleFormatError(f"step {k} has no class statistics in space {space!r}; "
                                "this bundle can only classify with its head")
    return stats[space]


class OwnSpaces(nn.Module):
    """FeCAM of each step's classes in that step's snapshot; takes the features of
    snapshots 1..k and returns (N, classes of steps 1..k)."""

    def __init__(self, fecams: list[nn.Module]):
        super().__init__()
        self.fecams = nn.ModuleList(fecams)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([fecam(f) for fecam, f in zip(self.fecams, features)], dim=1)


class BaseSpaceFeCAM(nn.Module):
    """FeCAM of every class in the base space, taking the same feature list as
    `OwnSpaces` (it reads only snapshot 1's)."""

    def __init__(self, fecam: nn.Module):
        super().__init__()
        self.fecam = fecam

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fecam(features[0])


class StatsClassifier(nn.Module):
    """A statistics classifier: a base-space part, alone or combined with a FeCAM term
    (`own`: FeCAM in the own spaces, or in the base space).

    FeCAM + own: distances add (same units). Linear head + FeCAM: log-probabilities add.
    """

    def __init__(self, base: nn.Module, own: nn.Module | None = None, as_log_probs=False):
        super().__init__()
        self.base, self.own, self.as_log_probs = base, own, as_log_probs

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        scores = self.base(features[0])
        if self.own is None:
            return scores
        return combine(scores, self.own(features), self.as_log_probs)


def combine(base: torch.Tensor, own: torch.Tensor, as_log_probs: bool) -> torch.Tensor:
    if as_log_probs:
        return base.log_softmax(1) + own.log_softmax(1)
    return base + own


class LastStageFeCAM(nn.Module):
    """FeCAM on the last `dim` features only: of statistics of every stage, the last
    stage's block. Measured as accurate as FeCAM on all 112 (docs/methods.md,
    "Statistics of every stage") at the serving cost of 64-d: FeCAM reads one D x D
    matrix per class, the linear heads one row."""

    def __init__(self, fecam: FeCAM, dim: int):
        super().__init__()
        self.fecam, self.dim = fecam, dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fecam(last_stage(features, self.dim))


def fecam_of(bundle: Bundle, stats: ClassStats, **kwargs) -> nn.Module:
    """FeCAM with the classifier config's parameters, on the last stage's features
    (`LastStageFeCAM`; the features themselves for `last` statistics)."""
    spec, dim = bundle.classifier, BACKBONES[bundle.arch].widths[-1]
    fecam = FeCAM(stats.last_dims(dim), float(spec["beta"]), float(spec.get("g1", 1)),
                  float(spec.get("g2", 1)), **kwargs)
    return fecam if stats.dim == dim else LastStageFeCAM(fecam, dim)


def base_fecam(bundle: Bundle, step: int) -> nn.Module:
    """FeCAM of every class of steps 1..step in the base space."""
    return fecam_of(bundle, base_stats(bundle, step), scale_classes=len(bundle.steps[0].classes))


def base_classifier(bundle: Bundle, step: int) -> nn.Module:
    """The base-space part of the classifier of `step`: FeCAM or a fitted linear head."""
    spec, stats = bundle.classifier, base_stats(bundle, step)
    beta = float(spec["beta"])
    if spec["kind"] == "fecam":
        return base_fecam(bundle, step)
    if spec["kind"] == "lda":
        weight, bias = lda_head(stats, float(spec["shrinkage"]))
    else:
        weight, bias = pseudo_feature_head(stats, int(spec["per_class"]), seed=int(spec["seed"]))
    return LinearOnStats(weight, bias, beta)


def fecam_term(bundle: Bundle, step: int) -> nn.Module | None:
    """What the classifier adds to its base-space part: FeCAM in the own spaces, in the
    base space, or nothing."""
    space = bundle.classifier["space"]
    if space == "base+own":
        return own_spaces(bundle, step)
    return BaseSpaceFeCAM(base_fecam(bundle, step)) if space == "base+fecam" else None


def own_spaces(bundle: Bundle, step: int) -> OwnSpaces:
    return OwnSpaces([fecam_of(bundle, own_stats(bundle, k)) for k in range(1, step + 1)])


def build_classifier(bundle: Bundle, step: int) -> StatsClassifier | None:
    """The statistics classifier of `step` (taking `feature_steps`' features), or None when
    the head classifies."""
    spec = bundle.classifier
    if spec.get("kind") == "head":
        return None
    if spec.get("kind") not in ("fecam", *LINEAR_KINDS) or spec.get("space") not in SPACES \
            or (spec["kind"] == "lda" and spec["space"] != "base") \
            or (spec["kind"] == "fecam" and spec["space"] == "base+fecam"):
        raise BundleFormatError(f"unknown classifier {spec!r} in the bundle metadata")
    prior = spec.get("cov_prior", 0)
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 0 <= prior < 1e9:
        raise BundleFormatError(f"classifier metadata: cov_prior must be a number >= 0, "
                                f"not {prior!r}")
    return StatsClassifier(base_classifier(bundle, step), fecam_term(bundle, step),
                           spec["kind"] in LINEAR_KINDS)


class StepScorer(nn.Module):
    """Normalised images -> scores over the classes of one step. `layout`: the memory
    format its convolutions take their input in (runtime/devices.py)."""

    def __init__(self, models: list[nn.Module], classifier: nn.Module | None,
                 layout: torch.memory_format = torch.contiguous_format,
                 stats_features: str = "last"):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.classifier = classifier
        self.layout = layout
        self.stats_features = stats_features  # what the classifier's statistics describe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout != torch.contiguous_format:
            x = x.contiguous(memory_format=self.layout)
        if self.classifier is None:
            return self.models[0](x).logits
        return self.classifier([statistics_features(m(x), self.stats_features).float()
                                for m in self.models])


def scorer_of_step(bundle: Bundle, step: int | None = None, device: str | torch.device = "cpu",
                   snapshots: list[Bundle] | None = None, fold: bool = False) -> StepScorer:
    """`snapshots[j - 1]`: the bundle after step j, for methods that do not pack their
    steps (then only the last step rebuilds from `bundle` itself). `fold`: as inference
    serves it, BatchNorm folded into the convolutions (runtime/fold_batchnorm.py) and
    in the device's fastest memory format (channels-last on the CPU)."""
    step = check_step(bundle, step)
    device = torch.device(device)
    models = [model_of_step(snapshots[j - 1] if snapshots and j != step else bundle, j)
              for j in feature_steps(bundle, step)]
    layout = torch.contiguous_format
    if fold:
        models = [fold_batchnorm(m) for m in models]
        layout = fast_memory_format(device)
    scorer = StepScorer(models, build_classifier(bundle, step), layout,
                        bundle.statistics_features)
    return scorer.to(device).to(memory_format=layout).eval()
