"""Run by the DDP tests under torchrun: a 2-step M2KD run on digits, then each rank writes
what it holds (hashes of masks and weights, the class statistics) for the test to compare.

    python -m torch.distributed.run --standalone --nproc-per-node=2 \
        tests/ddp_worker.py OUT [FAIL_RANK]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

import m2kd.trainer.protocol as protocol
from m2kd.runtime.distributed import init_from_environment, world
from m2kd.runtime.engine import StepConfig
from m2kd.trainer.datasets import class_order, load_digits_dataset


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    out, fail_rank = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else -1
    init_from_environment()
    rank, size = world()
    real_run_step, held = protocol.run_step, []

    def run_step(previous, data, *args, **kwargs):
        if previous is not None and rank == fail_rank:
            raise RuntimeError(f"rank {rank} fails on purpose")
        bundle, report = real_run_step(previous, data, *args, **kwargs)
        held.append(bundle)
        return bundle, report

    protocol.run_step = run_step
    data = load_digits_dataset(0)
    steps = protocol.Protocol(6, 2, class_order(10, 0), max_steps=2)
    config = StepConfig(epochs=1, finetune_epochs=1, augment="none", device="cpu",
                        progress=False, seed=0)
    protocol.run_protocol(data, steps, "m2kd", config, out, log=lambda s: None)
    final = held[-1]
    record = {"rank": rank, "world": size, "masks": digest(final.masks),
              "weights": digest(final.weights),
              "stats": {f"{k}.{space}": [s.mean.tolist(), s.cov.tolist(), s.count.tolist()]
                        for k, rec in enumerate(final.steps, 1) for space, s in rec.stats.items()}}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
