"""Bytes of a bundle by part, in each on-disk form the format has had, against one plain
model and the M2KD paper's Table 2 (0.84 MB beyond the model for ResNet-32 with 10
CIFAR-100 steps).

Builds the issue's configuration by default: ResNet-32, 3x32x32 inputs, 50 base classes
then 10 steps of 5 (random images, one epoch per step: bytes, not accuracy).
Usage: python benchmarks/bundle_bytes.py [--base 50] [--steps 10] [--increment 5]
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace

import torch

from m2kd.runtime.bundle import PARTS, InputSpec, bytes_by_part
from m2kd.runtime.engine import StepConfig, StepData, run_step
from m2kd.runtime.m2kd import M2KD
from m2kd.runtime.report import PAPER_EXTRA_MB

SPEC = InputSpec(3, 32, 32, (0.5,) * 3, (0.25,) * 3)
# On-disk forms, oldest first; the last is what new bundles use (docs/bundle-format.md).
FORMS = {
    "8-bit masks, fp32 steps": {"mask_bits": 8, "mask_coding": "raw", "step_dtype": "float32"},
    "4-bit masks, fp32 steps": {"mask_bits": 4, "mask_coding": "raw", "step_dtype": "float32"},
    "4-bit deflated, fp16 steps": {"mask_bits": 4, "mask_coding": "deflate",
                                   "step_dtype": "float16"},
    "4-bit by |w|, fp16 steps": {"mask_bits": 4, "mask_coding": "sorted-deflate",
                                 "step_dtype": "float16"},
}


def synthetic(base: int, steps: int, increment: int):
    bundle, g, seen = None, torch.Generator().manual_seed(0), 0
    for k in range(steps + 1):
        n = base if k == 0 else increment
        labels = torch.arange(2 * n).remainder(n) + seen
        data = StepData(torch.randn(len(labels), 3, 32, 32, generator=g), labels)
        cfg = StepConfig(epochs=1, finetune_epochs=1, device="cpu", progress=False,
                         augment="none")
        bundle, _ = run_step(bundle, data, [f"c{seen + i}" for i in range(n)], M2KD(), cfg,
                             arch="resnet32", input_spec=SPEC)
        seen += n
    return bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", type=int, default=50)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--increment", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    bundle = synthetic(args.base, args.steps, args.increment)
    rows = {name: bytes_by_part(replace(copy.copy(bundle), **form))
            for name, form in FORMS.items()}
    print(f"resnet32, {args.base} + {args.steps} x {args.increment} classes, "
          f"{bundle.num_steps} steps; MB")
    print(f"{'':26}" + "".join(f"{part:>11}" for part in PARTS)
          + f"{'beyond weights':>16}{'without statistics':>20}")
    for name, sizes in rows.items():
        extra = sum(n for part, n in sizes.items() if part != "weights")
        print(f"{name:26}" + "".join(f"{sizes[part] / 1e6:>11.3f}" for part in PARTS)
              + f"{extra / 1e6:>16.3f}{(extra - sizes['statistics']) / 1e6:>20.3f}")
    print(f"M2KD Table 2 beyond the model (no statistics): {PAPER_EXTRA_MB} MB; "
          f"target: half of it, {PAPER_EXTRA_MB / 2:.2f} MB")


if __name__ == "__main__":
    main()
