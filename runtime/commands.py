"""Runtime subcommands: inspect, verify, predict. Each parses, calls the library, prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from .classifier_option import check_override_backend, classifier_override_option

BUNDLE = click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))


@click.command("inspect")
@BUNDLE
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_bundle(bundle: Path, as_json: bool) -> None:
    """Show the steps, classes, size by part and free weights per layer of a bundle."""
    from .report import bundle_report, format_report

    report = bundle_report(bundle)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@click.command()
@BUNDLE
def verify(bundle: Path) -> None:
    """Rebuild every step and check its stored probe (exit 1 on the first mismatch)."""
    from .api import raise_on_mismatch
    from .bundle import load_bundle
    from .reconstruct import check_probes

    loaded = load_bundle(bundle)
    checks = check_probes(loaded)  # every step rebuilt once
    for check in checks:
        click.echo(f"step {check.step}: probe max abs diff {check.max_abs_diff:.2e} "
                   f"{'ok' if check.ok else 'MISMATCH'}")
    raise_on_mismatch(checks, str(bundle))
    click.echo(f"{bundle}: {loaded.num_steps} steps verified, checksum ok")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--step", type=click.IntRange(min=1), help="Use the model of this step.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
              show_default=True, help="auto: onnxruntime for .onnx files, torch for bundles.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@classifier_override_option
def predict(model: Path, paths: tuple[Path, ...], top_k: int, step: int | None, device: str,
            backend: str, as_json: bool, classifier: str | None) -> None:
    """Top-k classes for image files and folders of images.

    MODEL is a bundle (.safetensors) or a graph written by `m2kd export onnx`.
    """
    from .errors import BundleIntegrityError, ConfigError, DataError
    from .images import list_images, load_image

    files = []
    for p in paths:
        if p.is_dir():
            files.extend(list_images(p, recursive=True))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not files:
        raise DataError("no images found in the given folders")
    is_onnx = model.suffix.lower() == ".onnx"
    if backend == "auto":
        backend = "onnxruntime" if is_onnx else "torch"
    if (backend == "onnxruntime") != is_onnx:
        raise ConfigError(f"the {backend} backend needs "
                          f"{'an .onnx file (m2kd export onnx)' if not is_onnx else 'a bundle'}")
    check_override_backend(classifier, backend)
    import torch

    if backend == "onnxruntime":
        from .onnx_backend import OnnxModel

        runner = OnnxModel(model, device)
        spec = runner.spec
        pixels = torch.stack([load_image(f, spec) for f in files])
        predictions = runner.predict(pixels, top_k=top_k, step=step)
    else:
        from .api import Runtime
        from .images import normalise

        # Probes checked: never predict from a bundle that `verify` refuses.
        runtime = Runtime.load(model, device=device).using_classifier(classifier)
        spec = runtime.bundle.input_spec
        pixels = torch.stack([load_image(f, spec) for f in files])
        predictions = runtime.predict(normalise(pixels, spec), top_k=top_k, step=step)
    if any(not math.isfinite(score) for pred in predictions for score in pred.scores):
        raise BundleIntegrityError(f"{model}: the model produced non-finite scores")
    for f, pred in zip(files, predictions):
        if as_json:
            click.echo(json.dumps({"path": str(f), **pred.to_dict()}))
        else:
            tops = "  ".join(f"{lab} {score:.2f}" for lab, score in zip(pred.labels, pred.scores))
            click.echo(f"{f}\t{tops}")
