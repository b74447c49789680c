"""Where and how the numbers are computed: device, precision, memory layout, compilation.

One place decides the fast defaults, so that training, evaluation and the benchmarks agree: bf16 autocast and
channels_last where the hardware runs them natively (CPUs with AVX-512 BF16 / AMX through oneDNN, CUDA GPUs with bf16),
fp32 on request (``--precision fp32``) or where bf16 would be emulated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import UsageError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "bf16" or "fp32"
    channels_last: bool
    compile: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def to_dict(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compile}


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return device


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: bool | None = None,
                    compile: bool | None = None) -> Runtime:
    dev = resolve_device(device)
    if precision not in ("auto", "bf16", "fp32"):
        raise UsageError(f"unknown precision {precision!r}; choose one of: auto, bf16, fp32")
    if precision == "auto":
        precision = "bf16" if native_bf16(dev) else "fp32"
    if channels_last is None:
        # NHWC is what oneDNN's bf16 kernels and cuDNN's tensor-core kernels want.
        channels_last = precision == "bf16" or dev.type == "cuda"
    if compile is None:
        compile = False
    return Runtime(dev, precision, channels_last, compile)
