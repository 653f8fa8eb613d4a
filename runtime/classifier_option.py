"""The `--classifier` option shared by `m2kd train` and `m2kd add-classes` (no torch import)."""

import click

CLASSIFIERS = ("stats", "stats-base", "pseudo", "lda", "head")

classifier_option = click.option(
    "--classifier", type=click.Choice(CLASSIFIERS), default="stats", show_default=True,
    help="stats: FeCAM on class statistics in the base and each class's own snapshot "
         "(k forward passes at step k); stats-base: base snapshot only (one pass); "
         "pseudo / lda: a linear head on the base snapshot fitted on Gaussian "
         "pseudo-features / closed-form LDA (one pass); head: the sigmoid head (the papers').")
