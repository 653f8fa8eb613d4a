"""Training in several processes: `torch.distributed` with DistributedDataParallel.

Launched by torchrun (`torchrun --nproc-per-node N -m m2kd.runtime.cli train ...`, or
`m2kd train --nproc N`), one process per device: NCCL on CUDA, gloo on CPU. Without
torchrun's environment every function here is the single-process identity.

How a step runs on N ranks (runtime/engine.py):

- each rank trains on a fixed, seeded shard of the step's images (every N-th image of
  one permutation, padded by repetition to equal length so every rank runs the same
  number of batches), with batch size / N, so the global batch is the configured one;
  the teacher cache is computed for the rank's shard only (memory / N);
- the model is wrapped in DistributedDataParallel, whose backward averages gradients
  across ranks; the engine masks gradients after that, so momentum and weight decay
  never touch owned weights on any rank; every rank holds the same weights, so pruning
  decides the same masks everywhere, which is checked (`check_identical`), as is the
  bit-exactness of owned weights on every rank;
- after training, every rank takes rank 0's BatchNorm running statistics, so every
  rank holds the same model (checked with the weights);
- the class statistics sum counts, feature sums and outer products across ranks (the
  shard without its padding), so they equal the single-process result up to float
  summation order;
- only rank 0 writes the bundle and results.json, after a barrier that every rank must
  reach: a rank that fails stops the job (torchrun ends the others) before anything is
  written.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

from .errors import InvariantError


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_environment() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); False when alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def shard_indices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's (padded, exact) image indices: every N-th of a seeded permutation; the
    padded one repeats its first indices so every rank has ceil(n / N)."""
    rank, size = world()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    exact = order[rank::size]
    per_rank = -(-n // size)
    padded = torch.cat([exact, exact[:per_rank - len(exact)]]) if len(exact) < per_rank \
        else exact
    return padded, exact


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when distributed, else `model` itself.
    Unused parameters are allowed: a method may leave the auxiliary head out of its loss."""
    if world()[1] == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=True)


def _on_backend_device(tensor: torch.Tensor) -> torch.Tensor:
    """NCCL only moves CUDA tensors; gloo takes them where they are."""
    return tensor.cuda() if dist.get_backend() == "nccl" else tensor


def _reduced(tensor: torch.Tensor, op) -> torch.Tensor:
    """all_reduce on the backend's device, returned where the tensor was."""
    comm = _on_backend_device(tensor)
    dist.all_reduce(comm, op=op)
    return comm.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks; the tensor itself when alone."""
    return _reduced(tensor, dist.ReduceOp.SUM) if world()[1] > 1 else tensor


def broadcast_buffers(model: nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics). DDP broadcasts
    them before each forward, but the last training batch updates each rank's own copy."""
    if world()[1] == 1:
        return
    for buffer in model.buffers():
        comm = _on_backend_device(buffer)
        dist.broadcast(comm, src=0)
        if comm is not buffer:
            buffer.copy_(comm)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def check_identical(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise InvariantError unless every rank holds bit-identical `tensors`."""
    if world()[1] == 1:
        return
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    mine = torch.tensor(list(h.digest()), dtype=torch.int64)
    low, high = _reduced(mine, dist.ReduceOp.MIN), _reduced(mine, dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise InvariantError(f"ranks disagree on {what}")
