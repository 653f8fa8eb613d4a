"""`m2kd train`: a class-incremental run from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import click

from m2kd.runtime.augment_option import AUGMENTATIONS, augment_option
from m2kd.runtime.class_stats import STATS_FEATURES
from m2kd.runtime.classifier_option import classifier_option

from m2kd.runtime.engine import StepConfig

_DEFAULTS = StepConfig()
base_rotations_option = click.option(
    "--base-rotations/--no-base-rotations", default=_DEFAULTS.base_rotations,
    show_default=True, help="The base step also learns each class turned by 90, 180 and "
    "270 degrees as three extra classes, dropped after the step (PASS).")
teachers_see_shift_option = click.option(
    "--teachers-see-shift/--teachers-unshifted", default=_DEFAULTS.teachers_see_shift,
    show_default=True, help="With --augment shift: teachers distil from the shifted image "
    "the student sees (per batch), or from the image unshifted (once per step; sessions "
    "9-10).")
augment_option_with_auto = augment_option(
    "auto", ("auto", *AUGMENTATIONS), help="auto: the dataset's (flip for natural images, "
    "shift (up to 2 pixels) for MNIST, none for 8x8 digits and Fashion-MNIST).")
base_augment_option = click.option(
    "--base-augment", type=click.Choice(("auto", *AUGMENTATIONS)), default="auto",
    show_default=True, help="The base step's augmentation (it trains before the model "
    "ships, so it costs the device nothing). auto: the dataset's (shift for Fashion-MNIST), "
    "else --augment's.")
base_epochs_option = click.option(
    "--base-epochs", type=click.IntRange(min=1), help="The base step's epochs (default: the "
    "dataset's: twice the epochs for Fashion-MNIST, else the same; it trains before the "
    "model ships).")
stats_features_option = click.option(
    "--stats-features", type=click.Choice(STATS_FEATURES), default=_DEFAULTS.stats_features,
    show_default=True, help="What the class statistics describe: every stage's pooled "
    "output (stages; 112 values per image on the CIFAR ResNets, 3x the statistics bytes) or "
    "the last stage's, the head's input (last). Fixed by the base step.")


@click.command()
@click.option("--dataset", type=click.Choice(["mnist5k", "digits", "fashion-mnist", "cifar10",
                                              "cifar100", "folder"]), default="mnist5k",
              show_default=True)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Local data folder (cifar10, cifar100, folder; fashion-mnist: default "
                   "/usr/share/datasets/fashion-mnist).")
@click.option("--train-per-class", type=click.IntRange(min=1),
              help="Keep this many training images per class (deterministic subsample).")
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(min=4),
              help="Side of the square input for --dataset folder.")
@click.option("--arch", help="Backbone (default: the dataset's).")
@click.option("--method", default="m2kd", show_default=True)
@click.option("--order-seed", default=1993, show_default=True, type=int,
              help="Seed of the random class order; -1 keeps the natural order.")
@click.option("--base-classes", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--increment", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--steps", "max_steps", type=click.IntRange(min=1),
              help="Stop after this many steps (e.g. leave classes for add-classes).")
@click.option("--recipe", type=click.Choice(["default", "paper"]), default="default",
              show_default=True, help="default: measured here (BCE / N, lr 0.1 cosine, batch "
              "64, 15 epochs); paper: M2KD Sec. 4.2 (mean BCE, lr 2.0, batch 128, step decay).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's epochs.")
@click.option("--finetune-epochs", type=click.IntRange(min=0),
              help="Epochs after pruning (default: the last fifth of --epochs; paper "
              "recipe: another half after them).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Override the recipe's learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the recipe's batch.")
@click.option("--prune-ratio", default=_DEFAULTS.prune_ratio, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Share of the free weights zeroed after each step.")
@augment_option_with_auto
@base_augment_option
@base_epochs_option
@base_rotations_option
@teachers_see_shift_option
@stats_features_option
@classifier_option
@click.option("--exemplars-per-class", default=20, show_default=True,
              type=click.IntRange(min=1), help="Memory of exemplar methods (icarl, ...).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/last"),
              show_default=True, help="Folder for bundle.safetensors and results.json.")
@click.option("--skip-bad", is_flag=True, help="--dataset folder: skip unreadable images "
              "instead of refusing.")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes (one per device) under torchrun with DistributedDataParallel; "
              "gloo on CPU, NCCL on CUDA.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(dataset, root, train_per_class, image_size, arch, method, order_seed, base_classes,
          increment, max_steps, recipe, epochs, finetune_epochs, lr, batch_size, prune_ratio,
          augment, base_augment, base_epochs, base_rotations, teachers_see_shift,
          stats_features, classifier, exemplars_per_class, device, seed, out, skip_bad, nproc,
          progress):
    """Train step by step on a dataset and write the bundle and results.json."""
    from m2kd.runtime.devices import resolve_device
    from m2kd.runtime.distributed import init_from_environment, is_main
    from m2kd.runtime.engine import recipe_config

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise SystemExit(_torchrun(nproc))
    init_from_environment()
    echo = click.echo if is_main() else (lambda *args, **kwargs: None)
    progress = progress and is_main()

    from .datasets import class_order, load_dataset
    from .methods import create_method
    from .protocol import TABLE_HEADER, Protocol, run_protocol

    create_method(method)  # fail on a bad name before loading data
    resolve_device(device)
    data = load_dataset(dataset, str(root) if root else None, seed=seed, image_size=image_size,
                        train_per_class=train_per_class, skip_bad=skip_bad)
    protocol = Protocol(base_classes, increment,
                        class_order(data.num_classes, None if order_seed < 0 else order_seed),
                        max_steps)
    protocol.steps()  # validate the split before training
    config = recipe_config(
        recipe, epochs=epochs, lr=lr, batch_size=batch_size, prune_ratio=prune_ratio,
        finetune_epochs=finetune_epochs,
        base_rotations=base_rotations, teachers_see_shift=teachers_see_shift,
        stats_features=stats_features, classifier=classifier, device=device, seed=seed,
        progress=progress)
    config = replace(config, **data.step_settings(config.epochs, augment, base_augment,
                                                  base_epochs))
    echo(f"{data.name}: {data.num_classes} classes, {len(data.train_labels)} train / "
         f"{len(data.test_labels)} test images, {len(protocol.steps())} steps, "
         f"method {method}, device {resolve_device(device)}, class order "
         f"{','.join(data.class_names[c] for c in protocol.order)}")
    echo(TABLE_HEADER)
    results = run_protocol(data, protocol, method, config, out, arch=arch, log=echo,
                           exemplars_per_class=exemplars_per_class)
    if not is_main():
        return
    echo(f"average incremental accuracy {100 * results['average_incremental_accuracy']:.1f}"
         f"  final top-1 {100 * results['steps'][-1]['top1']:.1f}")
    if results["bundle"]:
        echo(f"wrote {out / results['bundle']} ({results['bundle_bytes']} bytes) and "
             f"{out / 'results.json'}")
    else:
        echo(f"wrote {out / 'results.json'}; {method} does not pack its steps with owner "
             "masks, so no bundle is written")


def _torchrun(nproc: int) -> int:
    """Run this same `m2kd train` command in `nproc` processes under torchrun."""
    args = sys.argv[1:]
    i = args.index("--nproc") if "--nproc" in args else None
    args = args[:i] + args[i + 2:] if i is not None else [a for a in args
                                                         if not a.startswith("--nproc=")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "m2kd.runtime.cli", *args]
    return subprocess.run(command).returncode


@click.command()
@click.option("--dataset", type=click.Choice(["mnist5k", "digits"]), default="mnist5k",
              show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--classes", help="Comma-separated class names (default: all).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test",
              show_default=True, help="Which split the images come from.")
@click.option("--flat", is_flag=True, help="One folder of files instead of a folder per class.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split.")
def samples(dataset, out, per_class, classes, split, flat, seed):
    """Write held-out test images of a packaged dataset as PNG files."""
    from .datasets import load_dataset
    from .samples import write_samples

    data = load_dataset(dataset, seed=seed)
    names = [c.strip() for c in classes.split(",")] if classes else None
    written = write_samples(data, out, per_class, names, flat, split)
    click.echo(f"wrote {len(written)} PNG files under {out}")


@click.command()
@click.option("--preset", default="mnist", show_default=True, help="A named protocol.")
@click.option("--methods", default="ft,lwf_mc,m2kd", show_default=True,
              help="Comma-separated method names.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Local data folder for CIFAR presets.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the preset's epochs.")
@click.option("--finetune-epochs", type=click.IntRange(min=0),
              help="Epochs after pruning, packing methods (default: the last fifth of the "
              "epochs).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override the lr.")
@click.option("--arch", help="Override the preset's backbone (e.g. resnet32).")
@augment_option_with_auto
@base_augment_option
@base_epochs_option
@base_rotations_option
@teachers_see_shift_option
@stats_features_option
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--cached-only", is_flag=True,
              help="Only report runs already in OUT; run nothing new.")
def bench(preset, methods, seeds, root, epochs, finetune_epochs, lr, arch, augment,
          base_augment, base_epochs, base_rotations, teachers_see_shift, stats_features, device,
          out, cached_only):
    """Run methods x seeds on a preset; write report.md (mean ± std) and plots."""
    import shlex
    import sys

    from m2kd.runtime.devices import resolve_device
    from m2kd.runtime.errors import ConfigError

    from .bench import run_grid, write_report
    from .presets import get_preset

    from m2kd.runtime.backbones import check_backbone

    if arch is not None:
        check_backbone(arch)
    p = get_preset(preset, epochs=epochs, lr=lr, arch=arch)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, not {seeds!r}") from None
    resolve_device(device)
    from m2kd.runtime.engine import recipe_config

    # The papers' methods classify with their heads; `*_stats` methods with class statistics.
    config = recipe_config(p.recipe, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                           finetune_epochs=finetune_epochs, augment=augment,
                           base_augment=base_augment, base_epochs=base_epochs,
                           base_rotations=base_rotations,
                           teachers_see_shift=teachers_see_shift,
                           stats_features=stats_features, classifier="head", device=device,
                           progress=False)
    out.mkdir(parents=True, exist_ok=True)
    results = run_grid(p, names, seed_list, out, config, str(root) if root else None,
                       log=click.echo, cached_only=cached_only)
    if not any(results.values()):  # only possible with --cached-only
        raise ConfigError(f"no cached runs of {', '.join(names)} under {out / 'runs'}; "
                          "run without --cached-only first")
    command = "m2kd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = write_report(results, preset, p, command, out)
    click.echo(f"wrote {report}")
