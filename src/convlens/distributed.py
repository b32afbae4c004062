"""Running under torchrun: which shard this process takes, and the exact merge of every
rank's top-k lists (torch.distributed, gloo on CPU, nccl on GPUs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from convlens.topk import FIELDS, ScanResult, TopK, merge_topk


def current_shard() -> tuple[int, int]:
    """(rank, world) of this process when torch.distributed is initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if current_shard()[1] > 1:
        dist.barrier()


def gather_objects(value: object) -> list[object]:
    """Every rank's `value`, in rank order, on every rank ([value] in a single process)."""
    import torch.distributed as dist

    world = current_shard()[1]
    if world == 1:
        return [value]
    gathered: list[object] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


@contextmanager
def sharded() -> Iterator[tuple[int, int]]:
    """(rank, world) from torchrun's environment; (0, 1) for a single process. With more than
    one, torch.distributed is initialised for the block (gloo on CPU, nccl on GPUs) and torn down
    after it, so no process exits with its communication threads still running."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if owned:
            dist.destroy_process_group()


def gather_shards(result: ScanResult, k: int) -> ScanResult:
    """Merge every rank's result exactly (torch.distributed all-gather); every rank gets the whole."""
    import torch.distributed as dist

    world = dist.get_world_size()
    merged = {}
    for layer, top in result.layers.items():
        parts = []
        for name in FIELDS:
            local = getattr(top, name).contiguous()
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local)
            parts.append(gathered)
        pieces = [TopK(*tensors).running() for tensors in zip(*parts)]
        combined = pieces[0]
        for piece in pieces[1:]:
            combined = merge_topk(combined, piece, k)
        merged[layer] = combined.finished()
    return ScanResult(merged, {**result.meta, "shard": [0, 1], "world_size": world})
