"""What this machine's hardware runs natively: bf16 in hardware or not, the instruction set PyTorch's kernels use,
and whether inductor has a CUDA back end. The runtime's defaults and the autotuner's candidates follow from these."""

from __future__ import annotations

import functools

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware. On CPU both oneDNN must report bf16 support and the processor
    must have bf16 instructions (AVX-512 BF16, AMX, Arm BF16): oneDNN also reports "supported" on AVX-512 CPUs that
    only emulate bf16, and an emulated bf16 product is as slow as 0.6 GFLOP/s on an AVX2 CPU (docs/speed.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
        return onednn and cpu_has_bf16_instructions()
    return False


def cpu_has_bf16_instructions(cpuinfo: str | None = None) -> bool:
    """bf16 instructions in the CPU flags of ``/proc/cpuinfo`` (or the text given); True where the flags cannot be
    read (not Linux), leaving the decision to oneDNN."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return True
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return True


def cpu_capability(device: torch.device | None = None) -> str:
    """The instruction set PyTorch's kernels run with (``AVX2``, ``AVX512``, ``DEFAULT``...; set by the CPU or by
    ``ATEN_CPU_CAPABILITY``), or the CUDA compute capability (``CUDA sm_90``)."""
    if device is not None and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA sm_{major}{minor}"
    return torch.backends.cpu.get_cpu_capability()


def yardstick_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the machine's best native multiply rate: bf16 where the hardware runs it, else fp32; never an
    emulated dtype."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """inductor's CUDA back end needs Triton (shipped with the Linux CUDA wheels, absent elsewhere)."""
    try:
        import triton  # noqa: F401  (only whether it imports: it is absent on most machines)
    except ImportError:
        return False
    return True
