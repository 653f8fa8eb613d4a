"""Training images/s of an M2KD step against plain supervised training of the same
backbone on the same images (issue 11: >= 0.7x, on GPU).

The M2KD step is `run_step` on a bundle of `--steps` earlier steps, everything included
(teacher cache, pruning and fine-tuning, statistics, checks); the plain loop is what a
user would write: the same backbone, data on the host copied per batch as the engine
does, cross-entropy, SGD with momentum, bf16 autocast on CUDA like the engine. Both read
the images `--epochs` times at `--batch-size`.
Usage: python benchmarks/train_throughput.py [--device cuda] [--arch resnet32]
       [--images 5000] [--steps 10] [--epochs 15] [--batch-size 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from add_classes import build_bundle

from m2kd.runtime.backbones import create_backbone
from m2kd.runtime.bundle import InputSpec
from m2kd.runtime.devices import fast_memory_format, resolve_device
from m2kd.runtime.engine import StepConfig, StepData, run_step
from m2kd.runtime.m2kd import M2KD


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_training(arch: str, data: StepData, classes: int, args, device) -> float:
    """Images/s of plain supervised training (one timed run, after a warm-up epoch)."""
    model = create_backbone(arch, classes, data.images.shape[1]).to(device)
    layout = fast_memory_format(device)
    model = model.to(memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    generator = torch.Generator().manual_seed(0)

    def epoch() -> None:
        order = torch.randperm(len(data.labels), generator=generator)
        for start in range(0, len(order), args.batch_size):
            i = order[start:start + args.batch_size]
            x = data.images[i].to(device, non_blocking=True).contiguous(memory_format=layout)
            y = data.labels[i].to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x).logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    epoch()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.epochs):
        epoch()
    synchronize(device)
    return args.epochs * len(data.labels) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    device = resolve_device(args.device)
    spec = InputSpec(3, 32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    bundle = build_bundle(args.steps, args.arch, spec)
    g = torch.Generator().manual_seed(1)
    data = StepData(torch.randn(args.images, 3, 32, 32, generator=g),
                    torch.full((args.images,), args.steps))
    cfg = StepConfig(epochs=args.epochs, batch_size=args.batch_size, augment="none",
                     device=str(device), progress=False)
    m2kd = max(run_step(bundle, data, ["new"], M2KD(), cfg)[1].images_per_second
               for _ in range(args.repeats))
    plain = max(plain_training(args.arch, data, args.steps + 1, args, device)
                for _ in range(args.repeats))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.arch}, {args.images} images of 3x32x32, {args.epochs} epochs, batch "
          f"{args.batch_size}, {args.steps} earlier steps, {name}, best of {args.repeats}")
    print(f"plain supervised training  {plain:8.0f} images/s")
    print(f"M2KD step (everything)     {m2kd:8.0f} images/s")
    print(f"M2KD / plain = {m2kd / plain:.2f} (issue 11's target on GPU: >= 0.7)")


if __name__ == "__main__":
    main()
