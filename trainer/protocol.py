"""A class-incremental run: split the class order into steps, run each step with the
engine, evaluate on every class seen so far, and write results.json (and the
bundle, for methods that pack their steps with owner masks).

Exemplar-free methods are handed only the images of the step's new classes;
`joint` (which says so) gets every seen class's images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from m2kd.runtime.atomic import atomic_write_text
from m2kd.runtime.bundle import save_bundle, snapshot_bytes
from m2kd.runtime.devices import resolve_device
from m2kd.runtime.distributed import barrier, is_main
from m2kd.runtime.engine import StepConfig, StepData, run_step
from m2kd.runtime.errors import ConfigError
from m2kd.runtime.classifier import classifier_config, scorer_of_step, snapshots_read
from m2kd.runtime.inference import run_in_batches
from m2kd.runtime.reconstruct import model_of_step

from .datasets import Dataset
from .exemplars import ExemplarMemory
from .methods import DEFAULT, method_spec
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


def config_for(method_name: str, config: StepConfig) -> StepConfig:
    """The run's config with the method's own pruning (None for non-packing methods) and
    classifier, where the method fixes them."""
    spec = method_spec(method_name)
    if spec.prune_ratio != DEFAULT:
        config = replace(config, prune_ratio=spec.prune_ratio)
    if spec.classifier != DEFAULT:
        config = replace(config, classifier=spec.classifier)
    return config


def _with_exemplars(data: StepData, memory: ExemplarMemory | None) -> StepData:
    if memory is None or not memory.images:
        return data
    x, y = memory.data()
    return StepData(torch.cat([data.images, x]), torch.cat([data.labels, y]))


def run_protocol(dataset: Dataset, protocol: Protocol, method_name: str, config: StepConfig,
                 out_dir: str | Path, arch: str | None = None,
                 log: Callable[[str], None] = print, exemplars_per_class: int = 20) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = arch or dataset.default_arch
    config = config_for(method_name, config)
    packing = config.prune_ratio is not None
    head_index = {c: i for i, c in enumerate(protocol.order)}
    device = resolve_device(config.device)
    spec = method_spec(method_name)
    memory = ExemplarMemory(per_class=exemplars_per_class) if spec.exemplars else None
    bundle, rows, seen, snapshots = None, [], [], []
    method = spec.factory()  # one object per run: PODNet keeps its classifier across steps
    for k, classes in enumerate(protocol.steps(), start=1):
        seen = seen + classes
        joint = method.reads_old_data and memory is None
        data = _with_exemplars(step_data(dataset.train_images, dataset.train_labels,
                                         seen if joint else classes, head_index), memory)
        names = [dataset.class_names[c] for c in classes]
        bundle, report = run_step(bundle, data, names, method, config, arch=arch,
                                  input_spec=dataset.input_spec,
                                  snapshots=None if packing else snapshots)
        if not packing:
            snapshots.append(bundle)  # the model after step k, teacher of later steps
        model = model_of_step(bundle, k, device)
        if memory is not None:
            new = step_data(dataset.train_images, dataset.train_labels, classes, head_index)
            memory.update(model, new.images, new.labels, [head_index[c] for c in classes],
                          device)
        if not is_main():
            continue  # evaluation and reports: rank 0 only (the model is the same everywhere)
        test = step_data(dataset.test_images, dataset.test_labels, seen, head_index)
        head_logits = predict_logits(model, test.images, device)
        if spec.nme:
            logits = memory.nme_scores(model, test.images, len(seen), device)
        elif hasattr(method, "scores"):
            logits = method.scores(model, test.images, device)
        elif bundle.classifier["kind"] == "head":
            logits = head_logits
        else:
            scorer = scorer_of_step(bundle, k, device, None if packing else snapshots)
            logits = run_in_batches(scorer, test.images, device)
        head = step_metrics(head_logits, test.labels, bundle.step_of_class())
        row = {"step": k, "classes": names,
               **step_metrics(logits, test.labels, bundle.step_of_class()),
               "head_top1": head["top1"],  # kept beside `head`: older results have only it
               "head": head, "train": report.to_dict()}
        rows.append(row)
        log(format_row(row))
    barrier()  # every rank finished: only then does rank 0 write anything
    if not is_main():
        return {}
    confusion = confusion_matrix(logits.argmax(1), test.labels, len(seen))
    bundle_path = out_dir / "bundle.safetensors" if packing else None
    if bundle_path:
        save_bundle(bundle, bundle_path)
    results = summarise(dataset, protocol, method_name, arch, config, rows, bundle_path)
    results["confusion_matrix"] = confusion
    results["method_params"] = getattr(method, "params", {})
    results["memory"] = memory_report(bundle, bundle_path, method_name, packing)
    if memory is not None:
        results["memory"]["exemplar_bytes"] = memory.stored_bytes()
    results["classifier"] = bundle.classifier.get("kind")
    if spec.nme:
        results["classifier"] = "nearest mean of exemplars"
    elif hasattr(method, "scores"):
        results["classifier"] = f"{method_name}'s own"
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, n: int) -> list[list[int]]:
    """Rows: true class (head order), columns: predicted class."""
    matrix = torch.zeros(n, n, dtype=torch.long)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return matrix.tolist()


def frozen_models(teachers: str, classifier: dict, steps: int) -> int:
    """Earlier models a non-packing method keeps after `steps` steps beside the model it
    serves: its teachers for the next step and every snapshot its classifier reads
    (a packing method rebuilds all of them from its bundle instead)."""
    kept = {"none": set(), "last": {steps}, "all": set(range(1, steps + 1))}[teachers]
    return len(kept | (set(snapshots_read(classifier, steps)) - {steps}))


def result_frozen_models(result: dict) -> int:
    """`frozen_models` of a results.json (also those written before it was recorded)."""
    name = "head" if result.get("classifier") == "head" \
        else result["config"].get("classifier", "head")
    return frozen_models(method_spec(result["method"]).teachers, classifier_config(name),
                         len(result["steps"]))


def memory_report(bundle, bundle_path, method_name: str, packing: bool) -> dict:
    """What a method must keep to learn the next step and to classify, beside the
    current model."""
    per_model = snapshot_bytes(bundle) // bundle.num_steps
    if packing:
        kept = {"bundle_bytes": bundle_path.stat().st_size}
    else:
        models = frozen_models(method_spec(method_name).teachers, bundle.classifier,
                               bundle.num_steps)
        kept = {"teacher_models_kept": models, "snapshot_bytes": models * per_model}
    stats = sum(s.nbytes() for rec in bundle.steps for s in rec.stats.values())
    return {"model_bytes": per_model, "every_snapshot_bytes": snapshot_bytes(bundle),
            "exemplar_bytes": 0, "statistics_bytes": stats,
            "statistics_bytes_per_class": stats / max(1, len(bundle.classes)), **kept}


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
        "bundle": bundle_path.name if bundle_path else None,
        "bundle_bytes": bundle_path.stat().st_size if bundle_path else None,
    }


def _pct(v) -> str:
    return "   -" if v is None else f"{100 * v:5.1f}"


# top1/top5/old/new: the run's classifier; head: the sigmoid head's top-1; train-new: the
# head's top-1 on the step's own new-class training images (did the step learn them?).
TABLE_HEADER = "step  classes           top1  top5   old   new  head  train-new   sec"


def format_row(row: dict) -> str:
    names = ",".join(row["classes"])
    names = names if len(names) <= 16 else names[:15] + "…"
    return (f"{row['step']:>4}  {names:<16} {_pct(row['top1'])} {_pct(row['top5'])} "
            f"{_pct(row['old'])} {_pct(row['new'])} {_pct(row.get('head_top1'))}      "
            f"{_pct(row['train'].get('train_accuracy_new'))} {row['train']['seconds']:5.1f}")
