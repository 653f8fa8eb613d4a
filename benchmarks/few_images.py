"""How many images does a class added on the device need? Measured on the on-device story.

Trains (or reuses) a base bundle of the first `--base-classes` classes (natural order),
then, for each N and each random draw, adds the remaining classes from N training
images each with `Runtime.add_classes` (the default step, no old image), and scores the
test images of every class with the bundle's classifier under each covariance prior of
`--priors` (`cov_prior` in runtime/classifier.py: 0 is none; the product's is the
default's second value).

    python benchmarks/few_images.py --dataset mnist5k --per-class 5,10,20,50 --draws 5
    python benchmarks/few_images.py --dataset fashion-mnist --train-per-class 500

Prints one row per N and prior: old- and new-class top-1, mean over draws, and the
new-class top-1 of every draw.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from m2kd.runtime.api import Runtime
from m2kd.runtime.bundle import load_bundle
from m2kd.runtime.classifier import COV_PRIOR
from m2kd.runtime.engine import StepConfig
from m2kd.trainer.datasets import load_dataset
from m2kd.trainer.few_images import draw_per_class, old_new_accuracy, with_cov_prior
from m2kd.trainer.protocol import Protocol, run_protocol


def base_bundle(data, base_classes: int, seed: int, out: Path):
    """The bundle of the first `base_classes` classes, trained once per --out."""
    path = out / "bundle.safetensors"
    if not path.is_file():
        order = list(range(data.num_classes))
        protocol = Protocol(base_classes, data.num_classes - base_classes, order, max_steps=1)
        config = StepConfig(device="cpu", **data.step_settings(StepConfig.epochs), seed=seed,
                            progress=False)
        run_protocol(data, protocol, "m2kd", config, out, log=print)
    return load_bundle(path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--base-classes", type=int, default=8)
    p.add_argument("--per-class", default="5,10,20,50")
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="of the split and the base model")
    p.add_argument("--priors", default=f"0,{COV_PRIOR:g}", help="cov_prior values to score")
    p.add_argument("--out", default="runs/few_images")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.dataset, seed=args.seed, train_per_class=args.train_per_class)
    base = base_bundle(data, args.base_classes, args.seed,
                       Path(args.out) / f"{args.dataset}-b{args.base_classes}-s{args.seed}")
    order = list(range(data.num_classes))
    new = order[args.base_classes:]
    priors = [float(v) for v in args.priors.split(",")]
    print(f"{args.dataset}: base {base.classes}, adding {[data.class_names[c] for c in new]}; "
          f"the product's cov_prior is {COV_PRIOR:g}")
    print("N per class | cov_prior |  old |  new | new per draw")
    for n in [int(v) for v in args.per_class.split(",")]:
        scores = {prior: [] for prior in priors}
        for d in range(args.draws):
            picked = draw_per_class(data.train_labels, new, n, seed=1000 * n + d)
            runtime = Runtime(base, device="cpu")
            runtime.add_classes({data.class_names[c]: data.train_images[i]
                                 for c, i in picked.items()}, seed=d)
            for prior in priors:
                scores[prior].append(old_new_accuracy(with_cov_prior(runtime.bundle, prior),
                                                      data, order))
        for prior, rows in scores.items():
            old, new_top1 = (100 * statistics.fmean(col) for col in zip(*rows))
            draws = " ".join(f"{100 * r[1]:.0f}" for r in rows)
            print(f"{n:>11} | {prior:9g} | {old:4.1f} | {new_top1:4.1f} | {draws}", flush=True)


if __name__ == "__main__":
    main()
