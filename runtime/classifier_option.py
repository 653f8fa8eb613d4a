"""The `--classifier` options (no torch import): the one a step stores (`m2kd train`,
`m2kd add-classes`) and the override of commands that only read a bundle."""

import click

from .errors import ConfigError

CLASSIFIERS = ("stats-base", "stats", "pseudo", "fecam", "fecam-base", "lda", "head")

classifier_option = click.option(
    "--classifier", type=click.Choice(CLASSIFIERS), default="stats-base", show_default=True,
    help="stats-base: a softmax head fitted on Gaussian pseudo-features of the base "
         "snapshot's class statistics + FeCAM in the same space (one forward pass); stats: "
         "the same head + FeCAM in each class's own snapshot (k passes at step k); pseudo: "
         "the pseudo-feature head alone (one pass); fecam / fecam-base: FeCAM "
         "in the base + own / base space; lda: closed-form LDA (one pass); head: the "
         "sigmoid head (the papers').")

classifier_override_option = click.option(
    "--classifier", type=click.Choice(CLASSIFIERS), default=None,
    help="Classify with this instead of the bundle's own choice (the class statistics it "
         "needs are in every bundle since v2); stats-base, pseudo or head cost one plain "
         "model's pass at any step.  [default: the bundle's]")


def check_override_backend(classifier: str | None, backend: str) -> None:
    """An ONNX graph has its classifier built in: it is chosen when exporting."""
    if classifier is not None and backend == "onnxruntime":
        raise ConfigError("--classifier applies to bundles; an ONNX graph classifies as it "
                          "was exported (m2kd export onnx --classifier ...)")
