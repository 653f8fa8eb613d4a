"""Training and teacher-inference speed of the step's backbone in NCHW and channels-last.

The engine trains, and the teacher cache infers, in `runtime.devices.fast_memory_format`;
this prints the measured images/s of both layouts side by side and their ratio.
Usage: python benchmarks/memory_format.py [--device cpu] [--arch resnet_small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from m2kd.runtime.backbones import create_backbone
from m2kd.runtime.devices import resolve_device


def images_per_second(run, n_images: int, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return n_images / best


def training(model, images, labels, batch: int):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def epoch():
        for start in range(0, len(labels), batch):
            out = model(images[start:start + batch])
            y = labels[start:start + batch]
            loss = F.cross_entropy(out.logits, y) + F.cross_entropy(out.aux_logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return epoch


def inference(model, images, batch: int):
    @torch.no_grad()
    def run():
        for start in range(0, len(images), batch):
            model(images[start:start + batch])
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="resnet_small")
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (args.images,), generator=g).to(device)
    print(f"{args.arch}, {args.images} images of 1x28x28, device {device}, "
          f"fastest of {args.repeats}")
    print(f"{'what':>27} {'NCHW img/s':>11} {'channels-last img/s':>20} {'ratio':>6}")
    for name, batch in (("training, batch 64", 64), ("teacher forward, batch 256", 256)):
        speeds = []
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            model = create_backbone(args.arch, 10, 1).to(device).to(memory_format=layout)
            images = x.contiguous(memory_format=layout)
            if name.startswith("training"):
                run = training(model.train(), images, y, batch)
            else:
                run = inference(model.eval(), images, batch)
            run()  # warm-up
            speeds.append(images_per_second(run, len(y), args.repeats, device))
        print(f"{name:>27} {speeds[0]:11.0f} {speeds[1]:20.0f} {speeds[1] / speeds[0]:6.2f}")


if __name__ == "__main__":
    main()
