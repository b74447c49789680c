"""This machine's dense matrix-multiply rate: the yardstick the achieved GFLOP/s of a training step is read against.

A large square ``torch.matmul`` is as close to the peak of the hardware as PyTorch gets; a convolutional network can
only approach it (its layers are smaller matrices, plus BN, ReLU and memory traffic that do no multiply-adds).
"""

from __future__ import annotations

import statistics
import time

import torch


class MatmulProbe:
    """One square product ``a @ b`` of size ``n`` in ``dtype``; ``sample()`` times one multiply (GFLOP/s).

    Samples are meant to be taken between the rounds of a benchmark, so that the rate and the network see the same
    machine (the same clocks, and on a shared machine the same neighbours)."""

    def __init__(self, dtype: torch.dtype, n: int = 2048, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.n, self.dtype = n, dtype
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=g).to(self.device, dtype)
        self.b = torch.randn(n, n, generator=g).to(self.device, dtype)
        self.samples: list[float] = []
        for _ in range(2):  # warm-up: library initialisation, clocks
            self._time()

    def _time(self) -> float:
        _sync(self.device)
        t = time.perf_counter()
        torch.matmul(self.a, self.b)
        _sync(self.device)
        return time.perf_counter() - t

    def sample(self, repeats: int = 1) -> None:
        for _ in range(repeats):
            self.samples.append(2 * self.n ** 3 / self._time() / 1e9)

    @property
    def gflops(self) -> float:
        return statistics.median(self.samples)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, device: str | torch.device = "cpu", repeats: int = 5) -> float:
    """Median GFLOP/s of ``repeats`` products of two n x n matrices (after two warm-up products)."""
    probe = MatmulProbe(dtype, n, device)
    probe.sample(repeats)
    return probe.gflops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
