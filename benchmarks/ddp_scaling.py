"""Training throughput of `m2kd train` in 1 process against N processes under torchrun
(DistributedDataParallel; gloo on CPU, NCCL on CUDA), the same data and global batch.

Images/s = images the steps trained on (both phases) / their seconds, from results.json.
On a multi-GPU machine: `python benchmarks/ddp_scaling.py --nproc 8 --device cuda`
(each process takes the GPU of its LOCAL_RANK).
Usage: python benchmarks/ddp_scaling.py [--nproc 2] [--device cpu] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = ["train", "--dataset", "mnist5k", "--base-classes", "6", "--increment", "2",
         "--steps", "2", "--no-progress"]


def images_per_second(nproc: int, device: str, epochs: int, out: Path) -> float:
    args = TRAIN + ["--epochs", str(epochs), "--device", device, "--out", str(out)]
    launcher = [sys.executable, "-m", "m2kd.runtime.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "m2kd.runtime.cli"]
    subprocess.run(launcher + args, check=True, capture_output=True)
    steps = json.loads((out / "results.json").read_text())["steps"]
    return sum(s["train"]["images_seen"] for s in steps) / sum(s["train"]["seconds"]
                                                                 for s in steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = images_per_second(1, args.device, args.epochs, Path(tmp) / "one")
        many = images_per_second(args.nproc, args.device, args.epochs, Path(tmp) / "many")
    print(f"mnist5k 6 + 2 classes, {args.epochs} epochs (+ fine-tuning), device {args.device}")
    print(f"1 process: {one:.0f} images/s; {args.nproc} processes: {many:.0f} images/s; "
          f"ratio {many / one:.2f}x")


if __name__ == "__main__":
    main()
