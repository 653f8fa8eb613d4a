"""The training augmentations (no torch import, so `--help` stays fast).

- flip: a random horizontal flip (natural images);
- shift: a random translation by up to SHIFT_PIXELS pixels each way, edges repeated
  (28-32 pixel images such as MNIST's digits: two pixels change no class);
- none.

Flips are finite, so the distillation targets are cached once per step; random shifts
are not, so teachers score each shifted batch as the student sees it (runtime/teachers.py).
"""

import click

AUGMENTATIONS = ("flip", "shift", "none")
SHIFT_PIXELS = 2


def augment_option(default: str, choices: tuple[str, ...] = AUGMENTATIONS, help: str = ""):
    return click.option("--augment", type=click.Choice(choices), default=default,
                        show_default=True, help=help or "flip: random horizontal flips; "
                        f"shift: random translations by up to {SHIFT_PIXELS} pixels.")

