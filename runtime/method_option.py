"""The `--method` of `m2kd add-classes` (no torch import, so `--help` stays fast).

- m2kd: the paper's loss (Eq. 4), distillation from every earlier model;
- m2kd_pass: the same + PASS's two terms (the old classes' pseudo-features as the
  head's negatives, feature distillation; docs/methods.md). The sigmoid head needs
  them to learn; the statistics classifiers do not read the head.
"""

import click

ON_DEVICE_METHODS = ("m2kd", "m2kd_pass")

method_option = click.option(
    "--method", type=click.Choice(("auto",) + ON_DEVICE_METHODS), default="auto",
    show_default=True,
    help="m2kd: the paper's distillation from every earlier model; m2kd_pass: + PASS's "
         "pseudo-features of the old classes and feature distillation (1.2-2x the step "
         "time), which the sigmoid head needs to learn. auto: m2kd_pass with --classifier "
         "head, m2kd otherwise (the statistics classifiers do not read the head).")
