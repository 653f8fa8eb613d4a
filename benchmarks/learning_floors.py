"""The measurement behind tests/test_learning.py's floors: the same run over more seeds.

    python benchmarks/learning_floors.py --seeds 0,1,2,3,4 [--reduction mean]
                                         [--finetune-share 0.5] [--no-base-rotations]
                                         [--classifier stats]
                                         [--few-images 5 --draws 5]
                                         [--method m2kd_pass]

Prints per seed the final top-1, old- and new-class accuracy (statistics classifier:
the default, or `--classifier`),
the lowest per-step training accuracy on the step's new classes, and the head's top-1
after each step and its final old / new. `--method`: another method of
trainer/methods.py (default m2kd). `--few-images N`: also the old- and new-class top-1
after the last step when its classes' statistics come from N training images each
(trainer/few_images.py), with the classifier's covariance prior and without it, per
draw. `--reduction mean` replays the pre-fix loss reduction;
`--finetune-share 0.5` the paper's fine-tuning for half the epochs after pruning.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from m2kd.runtime.bundle import load_bundle
from m2kd.runtime.classifier_option import CLASSIFIERS
from m2kd.runtime.engine import StepConfig
from m2kd.trainer.datasets import load_digits_dataset
from m2kd.trainer.few_images import few_image_bundle, old_new_accuracy, with_cov_prior
from m2kd.trainer.methods import METHODS
from m2kd.trainer.protocol import Protocol, run_protocol


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--reduction", default="batch", choices=["batch", "mean"])
    p.add_argument("--finetune-share", type=float, default=StepConfig.finetune_share)
    p.add_argument("--no-base-rotations", action="store_true",
                   help="no rotation classes in the base step (before session 9)")
    p.add_argument("--classifier", default=StepConfig.classifier, choices=CLASSIFIERS)
    p.add_argument("--few-images", type=int, help="images per class of the last step")
    p.add_argument("--draws", type=int, default=5, help="random draws of --few-images")
    p.add_argument("--method", default="m2kd", choices=sorted(METHODS))
    args = p.parse_args()
    torch.set_num_threads(2)
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = load_digits_dataset(seed=seed)
        order = [int(c) for c in torch.randperm(10, generator=torch.Generator().manual_seed(seed))]
        config = StepConfig(device="cpu", augment="none", seed=seed, progress=False,
                            loss_reduction=args.reduction,
                            finetune_share=args.finetune_share,
                            base_rotations=not args.no_base_rotations,
                            classifier=args.classifier)
        with tempfile.TemporaryDirectory() as out:
            r = run_protocol(data, Protocol(6, 2, order), args.method, config, out,
                             log=lambda s: None)
            bundle = load_bundle(f"{out}/bundle.safetensors")
        steps = r["steps"]
        head = steps[-1]["head"]
        print(f"seed {seed} order {order}: final {100 * steps[-1]['top1']:.1f} "
              f"old {100 * steps[-1]['old']:.1f} new {100 * steps[-1]['new']:.1f} "
              f"min train-new {100 * min(s['train']['train_accuracy_new'] for s in steps):.1f} "
              f"head {[round(100 * s['head_top1'], 1) for s in steps]} "
              f"(old {100 * head['old']:.1f} new {100 * head['new']:.1f})",
              flush=True)
        if bundle.classifier.get("cov_prior"):
            old, new = old_new_accuracy(with_cov_prior(bundle, 0), data, order)
            print(f"  without the covariance prior: old {100 * old:.1f} new {100 * new:.1f}")
        for draw in range(args.draws if args.few_images else 0):
            few = few_image_bundle(bundle, data, order, args.few_images, seed=draw)
            (o, n), (o0, n0) = (old_new_accuracy(b, data, order)
                                for b in (few, with_cov_prior(few, 0)))
            print(f"  {args.few_images} images, draw {draw}: old {100 * o:.1f} new {100 * n:.1f} "
                  f"(without the covariance prior: old {100 * o0:.1f} new {100 * n0:.1f})",
                  flush=True)


if __name__ == "__main__":
    main()
