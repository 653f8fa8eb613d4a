"""`m2kd export onnx` and `m2kd export triton`."""

from __future__ import annotations

from pathlib import Path

import click

from m2kd.runtime.classifier_option import classifier_override_option

BUNDLE = click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))


def _verified(path: Path, classifier: str | None):
    """Exporting a bundle that does not verify would ship wrong weights: refuse.
    `classifier` overrides the bundle's own choice (runtime/classifier.py)."""
    from m2kd.runtime.api import verify_bundle
    from m2kd.runtime.bundle import load_bundle
    from m2kd.runtime.classifier import with_classifier

    bundle = load_bundle(path)
    verify_bundle(bundle, str(path))
    return with_classifier(bundle, classifier)


@click.group()
def export() -> None:
    """Export a bundle to ONNX graphs or a Triton model repository."""


@export.command()
@BUNDLE
@click.option("--step", "step_text", default="last", show_default=True,
              help="A step number, 'last', or 'all' (one graph with a `step` input).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preprocess", is_flag=True,
              help="The graph takes uint8 NHWC images (of the bundle's size) and normalises.")
@click.option("--fp16", is_flag=True, help="Half-precision weights (for GPU serving).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare with the torch runtime before writing; a mismatch is an error.")
@classifier_override_option
def onnx(bundle: Path, step_text: str, out: Path, preprocess: bool, fp16: bool,
         check: bool, classifier: str | None) -> None:
    """Write an ONNX graph of one step (BatchNorm folded) or of all steps."""
    from m2kd.runtime.atomic import atomic_write_bytes
    from m2kd.runtime.errors import ConfigError

    from .onnx_export import all_steps_graph_bytes, step_graph_bytes
    from .parity import check_step_graph

    loaded = _verified(bundle, classifier)
    if step_text == "all":
        if fp16:
            raise ConfigError("--fp16 is available for per-step graphs only")
        data = all_steps_graph_bytes(loaded, preprocess)
        steps = list(range(1, loaded.num_steps + 1))
    else:
        step = loaded.num_steps if step_text == "last" else _step_number(step_text)
        data = step_graph_bytes(loaded, step, preprocess, fp16)
        steps = [step]
    if check and not preprocess:
        for k in steps:
            results = check_step_graph(loaded, data, k, fp16=fp16, all_steps=step_text == "all")
            worst = max(r.max_abs_diff for r in results)
            click.echo(f"step {k}: parity ok (max abs diff {worst:.2e}, batches 2/1/7)")
    elif check:
        click.echo("parity check skipped: --preprocess graphs take uint8 images "
                   "(checked in the test suite)")
    atomic_write_bytes(out, data)
    click.echo(f"wrote {out} ({len(data)} bytes; bundle {bundle.stat().st_size} bytes)")


def _step_number(text: str) -> int:
    from m2kd.runtime.errors import ConfigError

    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--step must be a number, 'last' or 'all', not {text!r}") from None


@export.command()
@BUNDLE
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model repository folder.")
@click.option("--name", default="m2kd", show_default=True, help="Model name in the repository.")
@click.option("--all-steps", is_flag=True, help="One version with the all-steps graph.")
@click.option("--preprocess", is_flag=True, help="Graphs take uint8 NHWC images.")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1))
@classifier_override_option
def triton(bundle: Path, out: Path, name: str, all_steps: bool, preprocess: bool,
           max_batch: int, classifier: str | None) -> None:
    """Write a Triton model repository (config.pbtxt + one version per step)."""
    from .triton import write_repository

    folder = write_repository(_verified(bundle, classifier), out, name, all_steps, preprocess,
                              max_batch)
    versions = sorted(p.name for p in folder.iterdir() if p.is_dir())
    click.echo(f"wrote {folder} (versions {', '.join(versions)}); config read back and every "
               "version checked with onnxruntime")
