"""`m2kd add-classes`: learn new classes on the device from folders of images."""

from __future__ import annotations

from pathlib import Path

import click

from .augment_option import augment_option
from .classifier_option import classifier_option
from .method_option import method_option


def _pct(v) -> str:
    return "  -  " if v is None else f"{100 * v:5.1f}"


@click.command("add-classes")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Folder with one sub-folder of images per new class.")
@click.option("--val", "val_dir", type=click.Path(path_type=Path),
              help="Labelled folder (old and new classes): accuracy before and after.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the new bundle here instead of replacing BUNDLE.")
@click.option("--keep-previous", is_flag=True,
              help="Keep the old bundle as BUNDLE.prev before replacing it.")
@click.option("--epochs", default=15, show_default=True, type=click.IntRange(min=1),
              help="Passes over the images; the last fifth fine-tune after pruning.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0,
              min_open=True))
@classifier_option
@method_option
@click.option("--prune-ratio", default=0.75, show_default=True,
              type=click.FloatRange(0, 1, max_open=True))
@augment_option("none")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of refusing.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def add_classes_command(bundle, data_dir, val_dir, out, keep_previous, epochs, batch_size, lr,
                        classifier, method, prune_ratio, augment, device, seed, skip_bad,
                        progress):
    """Add the classes under --data to BUNDLE without any old data (one M2KD step)."""
    from .api import verify_bundle
    from .atomic import atomic_copy
    from .bundle import load_bundle, save_bundle
    from .classifier import describe_classifier
    from .devices import resolve_device
    from .engine import StepConfig
    from .evaluate import folder_accuracy
    from .update import add_classes, check_capacity, method_for, read_new_classes

    # Every check happens before training, so a refusal writes nothing.
    old = load_bundle(bundle)
    verify_bundle(old, str(bundle))
    target_device = resolve_device(device)
    check_capacity(old, prune_ratio)
    method = method_for(old, classifier, None if method == "auto" else method)
    new = read_new_classes(old, data_dir, skip_bad,
                           warn=lambda message: click.echo(f"warning: {message}", err=True))
    before = folder_accuracy(old, val_dir, new.names, target_device) if val_dir else None
    click.echo(f"{bundle}: {old.num_steps} steps, {len(old.classes)} classes; adding "
               f"{', '.join(new.names)} from {len(new.labels)} images on {target_device} "
               f"({method})")

    config = StepConfig(epochs=epochs, lr=lr, batch_size=batch_size, prune_ratio=prune_ratio,
                        augment=augment, classifier=classifier, device=str(target_device),
                        seed=seed, progress=progress)
    updated, report = add_classes(old, new, config, method)
    click.echo(f"classifier: {describe_classifier(updated.classifier)}")
    if before is not None:
        after = folder_accuracy(updated, val_dir, new.names, target_device)
        click.echo("accuracy on --val    old    new    all")
        click.echo(f"  before           {_pct(before['old'])}  {_pct(before['new'])}  "
                   f"{_pct(before['all'])}")
        click.echo(f"  after            {_pct(after['old'])}  {_pct(after['new'])}  "
                   f"{_pct(after['all'])}")

    target = out or bundle
    if keep_previous:
        atomic_copy(bundle, bundle.with_name(bundle.name + ".prev"))
    checksum = save_bundle(updated, target)
    click.echo(f"step {report.step} done in {report.seconds:.1f} s, "
               f"{report.images_per_second:.0f} images/s, peak memory "
               f"{report.peak_memory_bytes / 2**20:.0f} MiB")
    click.echo(f"wrote {target} ({checksum[:19]}...)")
