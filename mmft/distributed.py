"""Rank, world size and the few collectives the trainers use, from torch.distributed itself.

Under DeepSpeed on CPU, accelerate's `process_index` / `num_processes` can report 0 / 1 on
every rank while torch.distributed is right, so the trainers ask torch.distributed."""

from __future__ import annotations

import torch


def distributed() -> tuple[int, int]:
    """(rank, world size) from torch.distributed itself: under DeepSpeed on CPU,
    accelerate's process_index / num_processes can report 0 / 1 on every rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if distributed()[1] > 1:
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def barrier() -> None:
    # torch.distributed directly: accelerate's own view of the ranks can be wrong under
    # DeepSpeed on CPU (see distributed()).
    if distributed()[1] > 1:
        torch.distributed.barrier()


def all_gather_objects(obj) -> list:
    world = distributed()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out

