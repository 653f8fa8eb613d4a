"""Where the time of one step goes: an M2KD step against an LwF-MC step (and M2KD without
its auxiliary term) on a bundle of 10 steps, phase by phase, taken in turn in one process,
fastest of `--repeats`. The data and defaults are `benchmarks/add_classes.py`'s (one class
of 400 images, 15 epochs, batch 64, no augmentation).

Phases: teacher scores (`TeacherCache.build`), training (both phases of a packing step),
pruning, the new classes' statistics and train-new accuracy, the bundle record. Each is
timed by wrapping the engine function that does it.
Usage: python benchmarks/step_phases.py [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from add_classes import build_bundle, one_step
from m2kd.runtime import engine
from m2kd.runtime.teachers import TeacherCache
from m2kd.trainer import methods

PHASES = {"_train_phase": "train", "_prune": "prune", "what_the_step_learned": "statistics",
          "_append_step": "record"}


def timed(function, name: str, seconds: dict[str, float]):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - started
    return wrapper


def install_timers(seconds: dict[str, float]) -> None:
    for function_name, phase in PHASES.items():
        setattr(engine, function_name, timed(getattr(engine, function_name), phase, seconds))
    build = TeacherCache.build.__func__
    TeacherCache.build = classmethod(timed(build, "teachers", seconds))


CREATE_METHOD = methods.create_method


def without_auxiliary(name: str):
    method = CREATE_METHOD(name)
    method.config.auxiliary = False
    return method


def run(bundle, n_steps: int, variant: str, args, seconds: dict[str, float]) -> dict:
    seconds.clear()
    if variant == "m2kd without aux":
        methods.create_method = without_auxiliary
        try:
            total = one_step(bundle, n_steps, "m2kd", "cache", args).seconds
        finally:
            methods.create_method = CREATE_METHOD
    else:
        total = one_step(bundle, n_steps, variant, "cache", args).seconds
    return {**seconds, "total": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10, help="steps in the bundle")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    step_args = argparse.Namespace(epochs=15, images=400, batch_size=64, augment="none",
                                   device="cpu", finetune_after=False)
    seconds: dict[str, float] = defaultdict(float)
    install_timers(seconds)
    bundle = build_bundle(args.steps)
    variants = ("m2kd", "lwf_mc", "m2kd without aux")
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for variant in variants:
            row = run(bundle, args.steps, variant, step_args, seconds)
            if variant not in best or row["total"] < best[variant]["total"]:
                best[variant] = row
    columns = ["teachers", "train", "prune", "statistics", "record", "total"]
    print(f"one class of 400 images onto {args.steps} steps, 15 epochs, CPU (2 threads), "
          f"fastest of {args.repeats}, seconds")
    print(f"{'':>17}" + "".join(f"{c:>11}" for c in columns))
    for variant, row in best.items():
        print(f"{variant:>17}" + "".join(f"{row.get(c, 0.0):>11.3f}" for c in columns))
    print(f"M2KD / LwF-MC = {best['m2kd']['total'] / best['lwf_mc']['total']:.2f}; "
          f"without the auxiliary term "
          f"{best['m2kd without aux']['total'] / best['lwf_mc']['total']:.2f}")


if __name__ == "__main__":
    main()
