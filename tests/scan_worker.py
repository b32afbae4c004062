"""A scan run in its own process, for the kill-and-resume and torchrun tests.

Usage: python scan_worker.py OUT [KILL_AT_INDEX]   (under torchrun: shards and merges)
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch.utils.data import Dataset

from convlens.distributed import gather_shards, sharded
from convlens.scan import scan

sys.path.insert(0, os.path.dirname(__file__))
from conftest import small_sequential


def worker_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return small_sequential()


class WorkerData(Dataset):
    """48 fixed random images with duplicates (ties); reading `kill_at` kills the process."""

    def __init__(self, kill_at: int | None = None) -> None:
        generator = torch.Generator().manual_seed(1)
        base = torch.randn(24, 2, 20, 20, generator=generator)
        self.images = torch.cat([base, base])
        self.kill_at = kill_at

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.images[index]


def main() -> None:
    out = sys.argv[1]
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
    with sharded() as (rank, world):
        result = scan(
            worker_model(),
            WorkerData(kill_at),
            k=5,
            batch_size=4,
            checkpoint=os.path.join(out, f"state-{rank}.safetensors"),
            checkpoint_every=1,
            shard=(rank, world),
        )
        if world > 1:
            result = gather_shards(result, 5)
    if rank == 0:
        result.save(os.path.join(out, "result.safetensors"))


if __name__ == "__main__":
    main()
