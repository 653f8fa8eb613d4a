"""How far is the default classifier from what the base snapshot's features can do? Measured.

The default classifier (`stats-base`) reads the base snapshot only, so its ceiling is set
by what that snapshot's features describe. For each bench run (a final bundle and its
results.json), this rebuilds the base snapshot exactly from the bundle and prints:

- product:  the bundle's own scorer at the last step (what `m2kd predict` scores), and
            its errors split into cross-step (the true class was learned in another step
            than the predicted one) and within-step;
- per feature kind, from the base snapshot: `ef` the exemplar-free classifier (pseudo
  head on the kind's statistics + FeCAM on the last stage's, as `stats-base` without
  its covariance prior and 16-bit rounding) and `probe` a softmax probe fitted on the
  real training features of every class (NOT exemplar-free: the space's ceiling for a
  linear classifier). Kinds: `stages` (the product's, 112-d on the small ResNets),
  `stages+grid` (+ the last stage pooled on a 2 x 2 grid), `stages+std` (+ each stage's
  spatial standard deviation).

    python benchmarks/base_space_ceiling.py --dataset fashion-mnist --train-per-class 500 \
        --runs benchmarks/results/fashion-b2-stages/runs/m2kd_stats_base --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from m2kd.runtime.bundle import load_bundle
from m2kd.runtime.class_stats import last_stage, statistics_of, tukey
from m2kd.runtime.classifier import scorer_of_step
from m2kd.runtime.inference import run_in_batches
from m2kd.runtime.linear_from_stats import LinearOnStats, pseudo_feature_head, softmax_head
from m2kd.runtime.reconstruct import model_of_step
from m2kd.runtime.stats_classifier import FeCAM
from m2kd.trainer.datasets import load_dataset

BETA = 0.5
KINDS = {
    "stages": lambda maps: [m.mean(dim=(2, 3)) for m in maps],
    "stages+grid": lambda maps: [m.mean(dim=(2, 3)) for m in maps[:-1]]
    + [F.adaptive_avg_pool2d(maps[-1], 2).flatten(1), maps[-1].mean(dim=(2, 3))],
    "stages+std": lambda maps: [m.std(dim=(2, 3)) for m in maps]
    + [m.mean(dim=(2, 3)) for m in maps],
}  # the pooled last stage last in each, so the last `width` entries are FeCAM's


@torch.no_grad()
def features(model, images: torch.Tensor, kind: str) -> torch.Tensor:
    return run_in_batches(lambda x: torch.cat(KINDS[kind](model(x).stages), 1), images,
                          "cpu", 500).double()


def probe(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Test scores of a softmax layer fitted on the real (Tukey) train features, the way
    the pseudo head is fitted on drawn ones."""
    head = softmax_head(tukey(train.float(), BETA), labels, int(labels.max()) + 1)
    return LinearOnStats(*head, BETA)(test.float())


def exemplar_free(train, labels, test, n_classes: int, width: int) -> torch.Tensor:
    stats = statistics_of(train, labels, list(range(n_classes)))
    fecam = FeCAM(stats.last_dims(width), BETA)(last_stage(test, width).float())
    pseudo = LinearOnStats(*pseudo_feature_head(stats), BETA)(test.float())
    return fecam.log_softmax(1) + pseudo.log_softmax(1)


def evaluate(run: Path, dataset: str, train_per_class: int | None, seed: int) -> dict:
    result = json.loads((run / "results.json").read_text())
    bundle = load_bundle(run / "bundle.safetensors")
    data = load_dataset(dataset, seed=seed, train_per_class=train_per_class)
    index = {c: i for i, c in enumerate(result["class_order"])}
    y_train = torch.tensor([index[int(c)] for c in data.train_labels])
    y_test = torch.tensor([index[int(c)] for c in data.test_labels])
    n = len(index)

    def top1(scores):
        return 100 * float((scores.argmax(1) == y_test).float().mean())

    step_of = torch.tensor([k for k, rec in enumerate(bundle.steps) for _ in rec.classes])
    with torch.no_grad():
        predicted = run_in_batches(scorer_of_step(bundle, bundle.num_steps),
                                   data.test_images, "cpu").argmax(1)
    wrong = predicted != y_test
    cross = wrong & (step_of[predicted] != step_of[y_test])
    row = {"product": top1(F.one_hot(predicted, n)),
           "errors cross-step": 100 * float(cross.float().mean()),
           "errors within-step": 100 * float((wrong & ~cross).float().mean())}
    base = model_of_step(bundle, 1).eval()
    width = base.feature_dim
    for kind in KINDS:
        train = features(base, data.train_images, kind)
        test = features(base, data.test_images, kind)
        row[f"{kind} {train.shape[1]}-d ef"] = top1(exemplar_free(train, y_train, test, n, width))
        row[f"{kind} {train.shape[1]}-d probe"] = top1(probe(train, y_train, test))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--runs", type=Path, required=True, help="a bench folder runs/METHOD")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(evaluate(args.runs / f"seed{seed}", args.dataset, args.train_per_class, seed))
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[-1].items()),
              flush=True)
    print("mean: " + ", ".join(f"{k} {statistics.fmean(r[k] for r in rows):.2f}"
                               for k in rows[0]))


if __name__ == "__main__":
    main()
