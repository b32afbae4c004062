"""Running under torchrun: which shard this process takes, and the exact merge of every
rank's top-k lists (torch.distributed, gloo on CPU, nccl on GPUs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from convlens.topk import FIELDS, ScanResult, TopK, merge_topk


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
