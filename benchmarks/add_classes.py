"""Cost of adding one class of 400 images to bundles with 2, 5 and 10 existing steps,
with the per-step teacher cache against naive per-batch teacher forwards, an M2KD
step against an LwF-MC step (one teacher, no auxiliary loss, no pruning) at 10 steps,
and an M2KD + PASS step (`m2kd add-classes --method m2kd_pass`) against an M2KD step.

Each measurement runs in its own process, so peak memory is that run's own. The
defaults are `m2kd add-classes`' own (15 epochs, batch 64, no augmentation); the
numbers committed before used `--epochs 4 --batch-size 128 --augment flip`, where the
teacher cache (one forward per teacher, image and view) weighs more.
Usage: python benchmarks/add_classes.py [--epochs 15] [--batch-size 64] [--augment none]
       [--repeats 2] [--finetune-after] [--images 400]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from queue import Empty

import torch

from m2kd.runtime.bundle import InputSpec
from m2kd.runtime.engine import StepConfig, StepData, run_step
from m2kd.runtime.m2kd import M2KD

SPEC = InputSpec(1, 28, 28, (0.0,), (1.0,))


def build_bundle(n_steps: int, arch: str = "resnet_small", spec: InputSpec = SPEC):
    """A bundle of `n_steps` tiny steps (1 class each, random images): cost, not accuracy."""
    bundle, g = None, torch.Generator().manual_seed(0)
    for k in range(n_steps):
        images = torch.randn(32, spec.channels, spec.height, spec.width, generator=g)
        data = StepData(images, torch.full((32,), k))
        cfg = StepConfig(epochs=1, lr=0.1, device="cpu", progress=False, augment="none")
        bundle, _ = run_step(bundle, data, [f"c{k}"], M2KD(), cfg, arch=arch, input_spec=spec)
    return bundle


def one_step(bundle, n_steps: int, method_name: str, teacher_mode: str, args):
    """The report of adding one class of `args.images` images to `bundle` (of `n_steps`
    steps)."""
    from m2kd.trainer.methods import create_method
    from m2kd.trainer.protocol import config_for

    g = torch.Generator().manual_seed(1)
    data = StepData(torch.randn(args.images, 1, 28, 28, generator=g),
                    torch.full((args.images,), n_steps))
    cfg = config_for(method_name, StepConfig(epochs=args.epochs, lr=0.1,
                                             batch_size=args.batch_size, augment=args.augment,
                                             teacher_mode=teacher_mode, device=args.device,
                                             finetune_inside=not args.finetune_after,
                                             progress=False))
    return run_step(bundle, data, ["new"], create_method(method_name), cfg)[1]


def measure_pairs(args, queue) -> None:
    """The ratios from runs taken in turn in one process (M2KD and M2KD + PASS at 2 and
    10 steps, LwF-MC at 10), fastest of each: a slower spell of a shared machine then
    hits all of them instead of whichever process ran during it."""
    torch.set_num_threads(2)
    bundles = {n: build_bundle(n) for n in (2, 10)}
    runs = [(2, "m2kd"), (10, "m2kd"), (10, "lwf_mc"), (2, "m2kd_pass"), (10, "m2kd_pass")]
    best = {run: float("inf") for run in runs}
    for _ in range(args.repeats):
        for n, method in runs:
            seconds = one_step(bundles[n], n, method, "cache", args).seconds
            best[(n, method)] = min(best[(n, method)], seconds)
    queue.put({f"{n} {method}": seconds for (n, method), seconds in best.items()})


def measure(n_steps: int, teacher_mode: str, args, queue, method_name: str = "m2kd") -> None:
    torch.set_num_threads(2)
    bundle = build_bundle(n_steps)
    reports = [one_step(bundle, n_steps, method_name, teacher_mode, args)
               for _ in range(args.repeats)]
    report = min(reports, key=lambda r: r.seconds)  # the least disturbed of the repeats
    queue.put({"steps": n_steps, "teachers": teacher_mode, "method": method_name,
               "seconds": report.seconds,
               "images_per_second": report.images_per_second,
               "peak_mib": max(r.peak_memory_bytes for r in reports) / 2**20})


def in_own_process(ctx, target, *args, **kwargs):
    """`target(*args, queue, **kwargs)` in a fresh process; what it put on the queue. A
    process that dies without an answer ends the benchmark instead of hanging it."""
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue), kwargs=kwargs)
    proc.start()
    while True:
        try:
            answer = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive():
                raise SystemExit(f"{target.__name__}{args[:2]} died (exit code "
                                 f"{proc.exitcode}); its error is above") from None
    proc.join()
    return answer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--images", type=int, default=400, help="images of the new class (more "
                   "on a GPU, where a 400-image step is over before fixed costs average out)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--augment", default="none", choices=("none", "flip"))
    p.add_argument("--device", default="auto")
    p.add_argument("--finetune-after", action="store_true", help="M2KD fine-tunes after "
                   "its epochs (15 + 3, the paper's way) instead of within them (12 + 3)")
    p.add_argument("--repeats", type=int, default=2, help="time each step this often, keep "
                   "the fastest")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    runs = [(n, mode, "m2kd") for n in (2, 5, 10) for mode in ("cache", "live")]
    runs += [(10, "cache", "lwf_mc")] + [(n, "cache", "m2kd_pass") for n in (2, 10)]
    for n, mode, method in runs:
        rows.append(in_own_process(ctx, measure, n, mode, args, method_name=method))
    print(f"{args.images} new images, {args.epochs} epochs, batch {args.batch_size}, augment "
          f"{args.augment}, device {args.device}, fastest of {args.repeats}; M2KD fine-tunes "
          + ("after its epochs" if args.finetune_after else "within its epochs"))
    print(f"{'steps':>5} {'method':>9} {'teachers':>8} {'seconds':>8} {'img/s':>7} "
          f"{'peak MiB':>9}")
    for r in rows:
        print(f"{r['steps']:>5} {r['method']:>9} {r['teachers']:>8} {r['seconds']:>8.2f} "
              f"{r['images_per_second']:>7.0f} {r['peak_mib']:>9.0f}")
    t = {(r["steps"], r["teachers"], r["method"]): r["seconds"] for r in rows}
    ips = {(r["steps"], r["method"]): r["images_per_second"] for r in rows
           if r["teachers"] == "cache"}
    for mode in ("cache", "live"):
        print(f"{mode}: time 10 steps / 2 steps = "
              f"{t[(10, mode, 'm2kd')] / t[(2, mode, 'm2kd')]:.2f}")
    print(f"live / cache at 10 steps = {t[(10, 'live', 'm2kd')] / t[(10, 'cache', 'm2kd')]:.2f}")
    print("M2KD step / LwF-MC step at 10 steps (each with its own recipe: M2KD prunes and "
          f"fine-tunes) = {t[(10, 'cache', 'm2kd')] / t[(10, 'cache', 'lwf_mc')]:.2f}; "
          f"per training image = {ips[(10, 'lwf_mc')] / ips[(10, 'm2kd')]:.2f}")
    print("M2KD + PASS step / M2KD step at 2 / 10 steps = " + " / ".join(
        f"{t[(n, 'cache', 'm2kd_pass')] / t[(n, 'cache', 'm2kd')]:.2f}" for n in (2, 10))
        + f"; M2KD + PASS, time 10 steps / 2 steps = "
        f"{t[(10, 'cache', 'm2kd_pass')] / t[(2, 'cache', 'm2kd_pass')]:.2f}")
    paired = in_own_process(ctx, measure_pairs, args)
    print(f"taken in turn in one process, fastest of {args.repeats} "
          f"(M2KD 2 steps {paired['2 m2kd']:.2f} s, 10 steps {paired['10 m2kd']:.2f} s, "
          f"LwF-MC 10 steps {paired['10 lwf_mc']:.2f} s):")
    print(f"  cache: time 10 steps / 2 steps = {paired['10 m2kd'] / paired['2 m2kd']:.2f}")
    print(f"  M2KD step / LwF-MC step at 10 steps = "
          f"{paired['10 m2kd'] / paired['10 lwf_mc']:.2f}")
    print(f"  M2KD + PASS step / M2KD step at 2 / 10 steps = "
          f"{paired['2 m2kd_pass'] / paired['2 m2kd']:.2f} / "
          f"{paired['10 m2kd_pass'] / paired['10 m2kd']:.2f} (M2KD + PASS 2 steps "
          f"{paired['2 m2kd_pass']:.2f} s, 10 steps {paired['10 m2kd_pass']:.2f} s)")
    print(json.dumps({"rows": rows, "paired": paired}))


if __name__ == "__main__":
    main()
