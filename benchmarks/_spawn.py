"""Measuring in a fresh process: a benchmark's memory peak must not include what the parent
process already holds (torch, the peers, earlier cases)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable


def in_fresh_process(target: Callable[[object, object], None], job: object) -> object:
    """Run `target(job, queue)` in a new 'spawn' process and return what it puts on `queue`."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(job, queue))
    process.start()
    result = queue.get()
    process.join()
    return result
