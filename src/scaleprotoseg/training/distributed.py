"""Several training processes, one model: PyTorch's DistributedDataParallel under `torchrun` (docs/method.md §11).

Every process holds the whole model. Each step's batch list (`train.batch_size` images, the paper's global
micro-batch) is cut into equal shards, one per process; gradients are averaged by DDP, and the losses are
normalised by the *global* pixel and pair counts (`losses.sharded_batch`), so that N processes compute the
same update as one process on the whole batch. Accumulation skips the gradient all-reduce except on the
micro-batch that ends an update (`no_sync`). Projection's running minimum, the confusion matrix and the
logged loss are reduced across processes; only rank 0 writes files.

Single process (no `torchrun`): every function here is a no-op, and nothing imports `torch.distributed`
state unless a process group exists.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """True in a process started by `torchrun` (it sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(device: torch.device) -> World:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a no-op outside torchrun."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local)


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def rank_device(device: torch.device, world: World) -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) on CUDA."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" and world.size > 1 else device


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over processes (in place; `t` itself when alone)."""
    if current().size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_min(t: torch.Tensor) -> torch.Tensor:
    if current().size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def barrier() -> None:
    if current().size > 1:
        dist.barrier()


def shard(n: int, world: World | None = None) -> range:
    """This process's contiguous block of n items (blocks in rank order, so rank order is item order)."""
    world = world or current()
    per, extra = divmod(n, world.size)
    start = world.rank * per + min(world.rank, extra)
    return range(start, start + per + (world.rank < extra))


def winner_rows(distance: torch.Tensor) -> torch.Tensor:
    """(P,) bool: rows whose global minimum of `distance` is this process's value, ties to the lowest rank
    (with `shard`'s blocks: the earliest image, as a single process's strict `<` keeps)."""
    world = current()
    best = all_min(distance.clone())
    candidate = torch.where(distance == best, torch.full_like(distance, world.rank), torch.full_like(distance, world.size))
    first = all_min(candidate)
    return first == world.rank


def gather_rows(t: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """Every process gets, per row, the winning process's row of `t` (`mine` from `winner_rows`)."""
    if current().size == 1:
        return t
    keep = mine.view(-1, *([1] * (t.dim() - 1)))
    return all_sum(torch.where(keep, t, torch.zeros_like(t)))


def wrap(module: torch.nn.Module, device: torch.device):
    """DDP over the parameters that train now (re-wrap when that changes: a new phase, fewer prototypes)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # The buffers (prototype tables, frozen BatchNorm statistics) are equal on every process: no sync per step.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
