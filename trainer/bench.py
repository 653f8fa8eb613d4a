"""`m2kd bench`: every method x seed on one preset, then report.md and plots.

Each run writes OUT/runs/<method>/seed<k>/results.json; a run whose results
already exist is reused, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from m2kd.runtime.engine import StepConfig
from m2kd.runtime.errors import ConfigError

from .datasets import load_dataset
from .methods import STATS_SUFFIXES, create_method, method_spec
from .metrics import average_incremental_accuracy, forgetting
from .orders import named_order
from .presets import Preset
from .protocol import Protocol, config_for, result_frozen_models, run_protocol


def run_grid(preset: Preset, methods: list[str], seeds: list[int], out: Path,
             config: StepConfig, root: str | None = None,
             log: Callable[[str], None] = print, cached_only: bool = False
             ) -> dict[str, list[dict]]:
    """Results per method, one per seed; with `cached_only`, runs not on disk are skipped."""
    for m in methods:
        method_spec(m)  # fail on a bad name before any work
    results: dict[str, list[dict]] = {m: [] for m in methods}
    if cached_only and not any(any((out / "runs" / m).glob("seed*/results.json"))
                               for m in methods):
        return results  # nothing to report: no need to load the data set
    total, done = len(methods) * len(seeds), 0
    for seed in seeds:
        data = load_dataset(preset.dataset, root, seed=seed,
                            train_per_class=preset.train_per_class)
        order = named_order(preset.order.format(seed=seed), data.num_classes)
        protocol = Protocol(preset.base_classes, preset.increment, order)
        # "auto" augmentations (the CLI's; base_augment also None) and base_epochs None:
        # the dataset's
        cfg = replace(config, seed=seed, **data.step_settings(
            config.epochs, config.augment, config.base_augment or "auto", config.base_epochs))
        for m in methods:
            run_dir = out / "runs" / m / f"seed{seed}"
            cached = run_dir / "results.json"
            if cached.is_file():
                result = json.loads(cached.read_text())
                _check_same_run(result, preset.arch or data.default_arch, config_for(m, cfg),
                                cached, _method_params(m))
            elif cached_only:
                continue
            else:
                result = run_protocol(data, protocol, m, cfg, run_dir, arch=preset.arch,
                                      log=lambda s: None,
                                      exemplars_per_class=preset.exemplars_per_class)
            results[m].append(result)
            done += 1
            log(f"[{done}/{total}] {m} seed {seed}: final top-1 "
                f"{100 * result['steps'][-1]['top1']:.1f}, average incremental "
                f"{100 * result['average_incremental_accuracy']:.1f}")
    return results


# The fields of a run's config that change its numbers (device, amp, teacher_mode: not).
RECIPE_FIELDS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "later_weight_decay",
                 "schedule", "lr_milestones", "lr_gamma", "loss_reduction", "prune_ratio",
                 "finetune_epochs", "finetune_share", "finetune_inside", "augment", "base_augment",
                 "base_epochs", "base_rotations", "teachers_see_shift", "classifier",
                 "stats_features", "seed")
# How runs written before a field existed were run (other absent fields are not compared).
RUN_BEFORE_THE_FIELD = {"base_rotations": False, "teachers_see_shift": False,
                        "stats_features": "last", "base_augment": None,
                        "base_epochs": None}
# How runs written before a method parameter existed were run (M2KD's, sessions 15-16).
PARAMS_BEFORE_THE_FIELD = {"old_features": 0.0, "feature_distillation": 0.0,
                           "feature_statistics": "running"}
# Method parameters that change nothing unless another is set, compared only then.
PARAM_MATTERS = {"feature_statistics": lambda params: params.get("feature_distillation", 0) > 0}
# Fields that change nothing under some augmentations, and are compared only where they do.
FIELD_MATTERS = {"teachers_see_shift": lambda config: config["augment"] == "shift",
                 # the head reads the last stage whatever the statistics describe
                 "stats_features": lambda config: config["classifier"] != "head"}


def _method_params(name: str) -> dict:
    """The method's hyper-parameters as results.json stores them (tuples become lists)."""
    return json.loads(json.dumps(getattr(create_method(name), "params", {})))


def _check_same_run(result: dict, arch: str, config: StepConfig, path: Path,
                    method_params: dict | None = None) -> None:
    """A cached run of another backbone, recipe or method setting must not join this
    grid's report as if it were this grid's. What an older run lacks is not compared."""
    if result.get("arch", arch) != arch:
        raise ConfigError(f"{path} was run with backbone {result['arch']}, not {arch}; "
                          "use another --out")
    stored_params = result.get("method_params")
    if None not in (stored_params, method_params):
        absent = {k: v for k, v in PARAMS_BEFORE_THE_FIELD.items() if k in method_params}
        stored_params = {**absent, **stored_params}
        field = next((k for k in sorted({*stored_params, *method_params})
                      if PARAM_MATTERS.get(k, lambda _: True)(method_params)
                      and stored_params.get(k) != method_params.get(k)), None)
        if field is not None:
            raise ConfigError(f"{path} was run with {result['method']}'s {field}="
                              f"{stored_params.get(field)!r}, not "
                              f"{method_params.get(field)!r}; use another --out")
    stored, expected = result.get("config", {}), asdict(config)
    for field in RECIPE_FIELDS:
        if not FIELD_MATTERS.get(field, lambda _: True)(expected):
            continue
        want = list(expected[field]) if isinstance(expected[field], tuple) else expected[field]
        have = stored.get(field, RUN_BEFORE_THE_FIELD.get(field, want))
        if have != want:
            raise ConfigError(f"{path} was run with {field}={have!r}, not {want!r}; "
                              "use another --out, or the same options")


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def _bytes(result: dict) -> str:
    mem = result["memory"]
    if "bundle_bytes" in mem:
        return f"bundle {mem['bundle_bytes'] / 1e6:.2f} MB"
    # recomputed, not read: results written before the classifier's snapshots were counted
    models = result_frozen_models(result)
    kept = models * mem.get("model_bytes", 0) + mem.get("exemplar_bytes", 0)
    what = f"{models} model{'s' if models != 1 else ''}"
    return f"{kept / 1e6:.2f} MB kept ({what})" if kept else "-"


def _subset(preset: Preset) -> str:
    n = preset.train_per_class
    return f" ({n} training images per class)" if n else ""


def _backbone(preset: Preset) -> str:
    return f", backbone {preset.arch}" if preset.arch else ""


def _seconds_per_step(runs: list[dict]) -> str:
    seconds = [row["train"]["seconds"] for r in runs for row in r["steps"]]
    return f"{statistics.fmean(seconds):.1f}"


def _stats_bytes(result: dict) -> str:
    """Bytes of class statistics per class (both stored spaces), for the stats classifier."""
    per_class = result["memory"].get("statistics_bytes_per_class")
    used = result.get("classifier") in ("fecam", "pseudo", "lda")  # runtime/classifier.py
    return f"{per_class / 1e3:.1f} KB / class" if per_class and used else "-"


def head_view(run: dict) -> dict | None:
    """The same run scored by its sigmoid head (recorded per step by the protocol), or
    None for runs that predate that record. A `*_stats` method trains exactly as its
    base method, so this is the base method's result without training it twice."""
    if not all("head" in row for row in run["steps"]):
        return None
    steps = [{**row, **row["head"]} for row in run["steps"]]
    matrix = [row["per_batch"] for row in steps]
    return {**run, "steps": steps, "accuracy_matrix": matrix, "classifier": "head",
            "average_incremental_accuracy": average_incremental_accuracy(
                [row["top1"] for row in steps]),
            "forgetting": forgetting(matrix), "confusion_matrix": None}


def with_head_rows(results: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Add `<method> (head)` after each `<method>_stats` or `<method>_stats_base` whose
    runs recorded the head (both train alike: the head row is the same either way)."""
    out: dict[str, list[dict]] = {}
    for m, runs in results.items():
        out[m] = runs
        views = [head_view(r) for r in runs]
        suffix = next((s for s in STATS_SUFFIXES if m.endswith(s)), None)
        if suffix and runs and all(views):
            out[f"{m.removesuffix(suffix)} (head)"] = views
    return out


def _summary(name: str) -> str:
    if name.endswith(" (head)"):
        base = name.removesuffix(" (head)")
        return f"{method_spec(base).summary}; the runs of its statistics " \
               "classifier, scored by the sigmoid head"
    return method_spec(name).summary


def _what_a_seed_sets(preset: Preset) -> str:
    sets = ["the class order"] if "{seed}" in preset.order else []
    sets += ["the split"] if preset.dataset in ("mnist5k", "digits") else []
    return "the seed sets " + ", ".join(sets + ["the initialisation"])


def write_report(results: dict[str, list[dict]], preset_name: str, preset: Preset,
                 command: str, out: Path) -> Path:
    from .plots import plot_confusions, plot_curves

    missing = [m for m, runs in results.items() if not runs]
    results = with_head_rows({m: runs for m, runs in results.items() if runs})
    lines = [f"# m2kd bench: {preset_name}", "", "Command:", "", f"    {command}", "",
             f"Dataset {preset.dataset}{_subset(preset)}{_backbone(preset)}, "
             f"{preset.base_classes} base classes + "
             f"{preset.increment} per step, order `{preset.order}`, metric top-1 on all "
             "classes seen so far. Mean ± std over seeds "
             f"({', '.join(str(len(r)) for r in results.values())} seeds per method; "
             f"{_what_a_seed_sets(preset)}).", "",
             *([f"Not run (no results yet): {', '.join(missing)}.", ""] if missing else []),
             "| method | final top-1 | avg. incremental | forgetting | final old | final new "
             "| s / step | statistics | memory beside the model | reads old data |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m, runs in results.items():
        spec = method_spec(m.removesuffix(" (head)"))
        lines.append(
            f"| {m} | {_mean_std([r['steps'][-1]['top1'] for r in runs])} "
            f"| {_mean_std([r['average_incremental_accuracy'] for r in runs])} "
            f"| {_mean_std([r['forgetting'] for r in runs])} "
            f"| {_mean_std([r['steps'][-1]['old'] for r in runs])} "
            f"| {_mean_std([r['steps'][-1]['new'] for r in runs])} "
            f"| {_seconds_per_step(runs)} | {_stats_bytes(runs[0])} "
            f"| {_bytes(runs[0])} | {'yes' if spec.factory().reads_old_data else 'no'} |")
    n_steps = len(next(iter(results.values()))[0]["steps"])
    lines += ["", "Top-1 after each step:", "",
              "| method | " + " | ".join(f"step {k}" for k in range(1, n_steps + 1)) + " |",
              "| --- |" + " --- |" * n_steps]
    for m, runs in results.items():
        cells = [_mean_std([r["steps"][k]["top1"] for r in runs]) for k in range(n_steps)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    lines += ["", "Class orders (one per seed, the same for every method):", ""]
    lines += [f"- seed {r['config']['seed']}: {', '.join(map(str, r['class_order']))}"
              for r in first]
    lines += ["", "Methods:", ""] + [f"- `{m}`: {_summary(m)}" for m in results]
    lines += ["", "![accuracy per step](accuracy_per_step.png)", "",
              "![confusion matrices, first seed](confusion_matrices.png)", ""]
    plot_curves(results, out / "accuracy_per_step.png")
    plot_confusions({m: r for m, r in results.items() if r[0]["confusion_matrix"]},
                    out / "confusion_matrices.png")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
