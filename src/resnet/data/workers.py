"""How many data-loader processes a run uses when not told."""

from __future__ import annotations

import os


def default_workers(limit: int = 4) -> int:
    """Data-loader processes when not told: one per core this process may run on, at most ``limit``. More workers
    than cores only queue for them (and PyTorch's DataLoader warns about it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(limit, cores))
