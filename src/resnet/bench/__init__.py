"""Benchmarks: images/s and memory of the project's training step and inference against a plain-PyTorch reference
measured in the same run, and this machine's matrix-multiply rate as the yardstick (``resnet bench``)."""

from .matmul import MatmulProbe, matmul_gflops
from .reference import reference_model
from .speed import BenchConfig, format_bench, run_bench

__all__ = ["BenchConfig", "MatmulProbe", "format_bench", "matmul_gflops", "reference_model", "run_bench"]
