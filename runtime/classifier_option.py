"""The `--classifier` option shared by `m2kd train` and `m2kd add-classes` (no torch import)."""

import click

CLASSIFIERS = ("stats", "pseudo", "fecam", "fecam-base", "lda", "head")

classifier_option = click.option(
    "--classifier", type=click.Choice(CLASSIFIERS), default="stats", show_default=True,
    help="stats: a softmax head fitted on Gaussian pseudo-features of the base snapshot's "
         "class statistics + FeCAM in each class's own snapshot (k forward passes at step "
         "k); pseudo: the pseudo-feature head alone (one pass); fecam / fecam-base: FeCAM "
         "in the base + own / base space; lda: closed-form LDA (one pass); head: the "
         "sigmoid head (the papers').")
