"""The `m2kd` command. Subcommands load lazily, so `m2kd predict` never imports the
trainer or the exporter. A user mistake (any M2KDError, a bad option, a missing
file) prints one line `Error: ...` and exits non-zero; only bugs show tracebacks.
"""

from __future__ import annotations

import importlib
import sys

import click

from .errors import M2KDError

COMMANDS = {
    "train": "m2kd.trainer.cli:train",
    "samples": "m2kd.trainer.cli:samples",
    "bench": "m2kd.trainer.cli:bench",
    "inspect": "m2kd.runtime.commands:inspect_bundle",
    "verify": "m2kd.runtime.commands:verify",
    "predict": "m2kd.runtime.commands:predict",
    "add-classes": "m2kd.runtime.add_classes_command:add_classes_command",
    "export": "m2kd.export.cli:export",
    "serve": "m2kd.runtime.serve_command:serve",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except M2KDError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # unwritable output folder, full disk, ...
            message = f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
            raise click.ClickException(message) from None

    def main(self, args=None, prog_name=None, **extra):
        extra["standalone_mode"] = False
        try:
            super().main(args, prog_name or "m2kd", **extra)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="m2kd")
def cli() -> None:
    """Exemplar-free class-incremental learning: train, add classes on device, serve."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
