"""LwF-MC as a 40-line training loop, beside the engine's on the same data and orders.

Issue 9's reference figure for the distillation head on MNIST B2 (42.6 final) came
from an independent minimal implementation on its own split and class orders. This
loop is such an implementation (plain PyTorch, nothing from the engine but the
backbone's definition and the bench's data and orders): BCE summed over classes and
averaged over the batch, sigmoid scores of the last model (eval mode) as targets of
the old classes, SGD momentum 0.9, lr 0.1 cosine per step, weight decay 5e-4,
batch 64, 15 epochs, no augmentation. Where its numbers match the engine's, a gap to
a figure measured elsewhere is the split and the orders, not the engine.

Usage: python benchmarks/lwf_mc_minimal.py [--seeds 0,1,2] [--engine DIR] [--order NAME]
       [--later-lr LR]
(DIR: a bench folder with runs/lwf_mc/seed<k>/results.json, e.g.
benchmarks/results/mnist-b2; several folders may be given comma-separated)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from m2kd.runtime.backbones import create_backbone
from m2kd.trainer.datasets import load_dataset
from m2kd.trainer.orders import named_order
from m2kd.trainer.protocol import Protocol, step_data


@torch.no_grad()
def top1(model, images, labels) -> float:
    model.eval()
    return float((model(images).logits.argmax(1) == labels).float().mean())


def train_step(model, teacher, images, labels, n_old, seed_generator, epochs=15, batch=64,
               lr=0.1):
    """One LwF-MC step: teacher scores on the old columns, one-hot on the new ones."""
    old_targets = None
    if teacher is not None:
        teacher.eval()
        with torch.no_grad():
            old_targets = torch.sigmoid(teacher(images).logits)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    classes = model.head.out_features
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=seed_generator)
        for start in range(0, len(order), batch):
            i = order[start:start + batch]
            targets = F.one_hot(labels[i], classes).float()
            if old_targets is not None:
                targets[:, :n_old] = old_targets[i]
            logits = model(images[i]).logits
            loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(i)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()


def run_seed(seed: int, order_name: str = "seed", later_lr: float = 0.1
             ) -> tuple[list[int], list[float]]:
    """The bench's MNIST B2 protocol for one seed: its split, order and 2 + 4 x 2 steps
    (`order_name` "seed" is the bench's permutation per seed; any other name is fixed)."""
    data = load_dataset("mnist5k", None, seed=seed)
    order = named_order(f"seed:{seed}" if order_name == "seed" else order_name,
                        data.num_classes)
    index = {c: i for i, c in enumerate(order)}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model, teacher, seen, curve = None, None, [], []
    for classes in Protocol(2, 2, order).steps():
        seen += classes
        train = step_data(data.train_images, data.train_labels, classes, index)
        if model is None:
            model = create_backbone(data.default_arch, len(classes), train.images.shape[1])
        else:
            model.add_classes(len(classes))
        train_step(model, teacher, train.images, train.labels, len(seen) - len(classes),
                   generator, lr=0.1 if teacher is None else later_lr)
        test = step_data(data.test_images, data.test_labels, seen, index)
        curve.append(top1(model, test.images, test.labels))
        teacher = copy.deepcopy(model)
    return order, curve


def engine_final(folders: list[Path], seed: int) -> float | None:
    for folder in folders:
        path = folder / "runs" / "lwf_mc" / f"seed{seed}" / "results.json"
        if path.is_file():
            return json.loads(path.read_text())["steps"][-1]["top1"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--engine", default="", help="bench folders with lwf_mc runs")
    p.add_argument("--later-lr", type=float, default=0.1,
                   help="lr of the steps after the base step (the reference: 0.1)")
    p.add_argument("--order", default="seed",
                   help="seed (the bench's permutation per seed), natural or numpy1993")
    args = p.parse_args()
    torch.set_num_threads(2)
    folders = [Path(f) for f in args.engine.split(",") if f]
    minimal, engine = [], []
    print("seed  order                 minimal loop, top-1 per step      final  engine final")
    for seed in (int(s) for s in args.seeds.split(",")):
        order, curve = run_seed(seed, args.order, args.later_lr)
        theirs = engine_final(folders, seed)
        minimal.append(curve[-1])
        engine += [theirs] if theirs is not None else []
        print(f"{seed:4d}  {','.join(map(str, order)):20s}  "
              f"{' '.join(f'{100 * v:5.1f}' for v in curve)}  {100 * curve[-1]:5.1f}  "
              + (f"{100 * theirs:5.1f}" if theirs is not None else "  -"), flush=True)

    def summary(values):
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f} ({len(values)} seeds)"
    print(f"minimal loop final: {summary(minimal)}")
    if engine:
        print(f"engine lwf_mc final: {summary(engine)}")


if __name__ == "__main__":
    main()
