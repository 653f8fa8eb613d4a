"""A class-incremental run: split the class order into steps, run each step with the
engine, evaluate on every class seen so far, and write the bundle and results.json.

Exemplar-free methods are handed only the images of the step's new classes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from m2kd.runtime.atomic import atomic_write_text
from m2kd.runtime.bundle import save_bundle
from m2kd.runtime.devices import resolve_device
from m2kd.runtime.engine import StepConfig, StepData, run_step
from m2kd.runtime.errors import ConfigError
from m2kd.runtime.reconstruct import model_of_step

from .datasets import Dataset
from .methods import create_method
from .metrics import average_incremental_accuracy, forgetting, predict_logits, step_metrics

RESULTS_SCHEMA = "m2kd-results/1"


@dataclass
class Protocol:
    base_classes: int
    increment: int
    order: list[int]  # original class ids in the order they are learned
    max_steps: int | None = None  # stop early, leaving the remaining classes unlearned

    def steps(self) -> list[list[int]]:
        """Class ids of each step: `base_classes`, then `increment` at a time."""
        n = len(self.order)
        if not 1 <= self.base_classes <= n or self.increment < 1:
            raise ConfigError(f"base classes must be in 1..{n} and the increment >= 1")
        cuts = list(range(self.base_classes, n, self.increment))
        bounds = [0] + cuts + [n]
        return [self.order[a:b] for a, b in zip(bounds, bounds[1:])][:self.max_steps]


def step_data(images: torch.Tensor, labels: torch.Tensor, classes: list[int],
              head_index: dict[int, int]) -> StepData:
    """The images of `classes` only, labelled by their head index."""
    keep = torch.isin(labels, torch.tensor(classes))
    mapped = torch.tensor([head_index[int(c)] for c in labels[keep]], dtype=torch.long)
    return StepData(images[keep], mapped)


def run_protocol(dataset: Dataset, protocol: Protocol, method_name: str, config: StepConfig,
                 out_dir: str | Path, arch: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = arch or dataset.default_arch
    head_index = {c: i for i, c in enumerate(protocol.order)}
    device = resolve_device(config.device)
    bundle, rows, seen = None, [], []
    for k, classes in enumerate(protocol.steps(), start=1):
        data = step_data(dataset.train_images, dataset.train_labels, classes, head_index)
        names = [dataset.class_names[c] for c in classes]
        bundle, report = run_step(bundle, data, names, create_method(method_name), config,
                                  arch=arch, input_spec=dataset.input_spec)
        seen = seen + classes
        test = step_data(dataset.test_images, dataset.test_labels, seen, head_index)
        logits = predict_logits(model_of_step(bundle, k, device), test.images, device)
        row = {"step": k, "classes": names, **step_metrics(logits, test.labels,
                                                           bundle.step_of_class()),
               "train": report.to_dict()}
        rows.append(row)
        log(format_row(row))
    bundle_path = out_dir / "bundle.safetensors"
    save_bundle(bundle, bundle_path)
    results = summarise(dataset, protocol, method_name, arch, config, rows, bundle_path)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results


def summarise(dataset, protocol, method_name, arch, config, rows, bundle_path) -> dict:
    matrix = [r["per_batch"] for r in rows]
    return {
        "schema": RESULTS_SCHEMA,
        "dataset": dataset.name,
        "method": method_name,
        "arch": arch,
        "class_order": protocol.order,
        "base_classes": protocol.base_classes,
        "increment": protocol.increment,
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "steps": rows,
        "accuracy_matrix": matrix,
        "average_incremental_accuracy": average_incremental_accuracy([r["top1"] for r in rows]),
        "forgetting": forgetting(matrix),
        "bundle": bundle_path.name,
        "bundle_bytes": bundle_path.stat().st_size,
    }


def _pct(v) -> str:
    return "   -" if v is None else f"{100 * v:5.1f}"


TABLE_HEADER = "step  classes           top1  top5   old   new   sec"


def format_row(row: dict) -> str:
    names = ",".join(row["classes"])
    names = names if len(names) <= 16 else names[:15] + "…"
    return (f"{row['step']:>4}  {names:<16} {_pct(row['top1'])} {_pct(row['top5'])} "
            f"{_pct(row['old'])} {_pct(row['new'])} {row['train']['seconds']:5.1f}")
