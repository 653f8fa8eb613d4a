"""How far from the truth do the old classes' moved means land? Measured on bundles.

`m2kd_proto` and `m2kd_pass` (runtime/old_class_features.py) move each old class's
stored mean from the snapshot that learned it into a later model's space with a ridge map
fitted on that later step's new-class images. Here, for the last model of each bundle,
the truth is known: the mean of the old class's test images in that model's space (Tukey
features). Printed per bundle, in units of the same space: the mean distance between
class means (how far a misplaced mean may go before it sits on another class), and the
mean error of the stored mean left where it was (stale), moved by the ridge map at
several ridges, and moved by the new images' mean shift alone.

    python benchmarks/old_class_transport.py --dataset mnist5k RUN_DIR/seed0 RUN_DIR/seed3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from m2kd.runtime.bundle import load_bundle
from m2kd.runtime.class_stats import pooled_features, tukey
from m2kd.runtime.classifier import own_stats
from m2kd.runtime.old_class_features import ridge_map, transported
from m2kd.runtime.reconstruct import model_of_step
from m2kd.trainer.datasets import load_dataset


def mean_errors(bundle, data, ridges: list[float]) -> dict[str, float]:
    """Mean distance of each old class's moved mean from its true mean in the last model."""
    last = bundle.num_steps
    ids = [data.class_names.index(name) for name in bundle.classes]
    x, y = data.test_images, data.test_labels
    target = tukey(pooled_features(model_of_step(bundle, last), x, "cpu")).double()
    true = torch.stack([target[y == i].mean(0) for i in ids])
    fit = torch.isin(y, torch.tensor(ids[-len(bundle.steps[-1].classes):]))
    born = bundle.step_of_class()
    errors: dict[str, list[float]] = {"stale": [], "shift": [],
                                      **{f"ridge {r:g}": [] for r in ridges}}
    for step in range(1, last):
        source = tukey(pooled_features(model_of_step(bundle, step), x, "cpu")).double()
        stats = own_stats(bundle, step).last_dims(source.shape[1])
        moved = {"stale": stats.mean.double(),
                 "shift": stats.mean.double() + target[fit].mean(0) - source[fit].mean(0)}
        for r in ridges:
            moved[f"ridge {r:g}"] = transported(stats, *ridge_map(source[fit], target[fit], r))[0]
        rows = [k for k, s in enumerate(born) if s == step]
        for name, means in moved.items():
            errors[name] += [float((means[j] - true[k]).norm()) for j, k in enumerate(rows)]
    spread = torch.cdist(true, true).sum() / (len(ids) * (len(ids) - 1))
    return {"between classes": float(spread),
            **{name: sum(e) / len(e) for name, e in errors.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders holding bundle.safetensors")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--ridges", default="0.01,0.1,1")
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    ridges = [float(r) for r in args.ridges.split(",")]
    for run in args.runs:
        errors = mean_errors(load_bundle(run / "bundle.safetensors"), data, ridges)
        print(f"{run}: " + ", ".join(f"{k} {v:.2f}" for k, v in errors.items()))


if __name__ == "__main__":
    main()
