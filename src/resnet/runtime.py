"""Where and how the numbers are computed: device, precision, memory layout, compilation.

One place decides the fast defaults, so that training, evaluation and the benchmarks agree (figures: docs/speed.md):

- bf16 autocast where the hardware runs it natively (CPUs with AVX-512 BF16 / AMX through oneDNN, CUDA GPUs with
  bf16), fp32 on request (``--precision fp32``) or where bf16 would be emulated;
- channels_last (NHWC) everywhere: the layout oneDNN's bf16 and cuDNN's tensor-core kernels want, and on CPUs without
  native bf16 the faster fp32 layout too (AVX2, fp32, one thread: ResNet-20 training 1.15x NCHW, inference with BN
  folded 1.42x; ResNet-50 inference 1.35x; docs/speed.md);
- on CPU, ``--runtime auto`` measures the candidates instead of trusting these defaults (``training.autotune``);
- ``torch.compile`` (inductor) by default where it pays for its compile time: CUDA GPUs (with Triton). On CPU it is
  off by default (no gain for the training step, see ``default_compile``) and on with ``--compile``. A compile that
  fails at run time falls back to eager with one warning line;
- CUDA graphs (inductor's ``reduce-overhead`` mode) on request (``--cuda-graphs``, training on CUDA only): one graph
  launch per forward and backward pass instead of hundreds of kernel launches, which is what bounds the small CIFAR
  nets at batch 128 on a fast GPU (not measured here: no GPU);
- for inference (``prepare_inference``), BN folded into the convolutions; compiled with frozen weights if compiling.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import warnings
from dataclasses import dataclass

import torch

from .errors import UsageError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "bf16" or "fp32"
    channels_last: bool
    compile: bool
    cuda_graphs: bool = False  # with compile, on CUDA, for training: inductor's reduce-overhead mode

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

    def prepare_inference(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` for inference only: eval mode, each BN folded into the convolution before it (fewer
        passes over memory; 1.2-1.35x on CPU), then prepared, and compiled with frozen weights if this runtime
        compiles. Call it under ``torch.no_grad()``; the original ``model`` is left as it is."""
        return self.compile_model(self.prepare(fold_batchnorm(model)), inference=True)

    def compile_model(self, model: torch.nn.Module, *, inference: bool = False) -> torch.nn.Module:
        """``model`` compiled if this runtime compiles (else ``model`` itself), falling back to eager if compiling
        fails. ``inference=True`` also freezes the weights into the graph (BN folded into the convolutions, weights
        pre-packed for oneDNN); only for a model in eval mode whose weights will not change, called under no_grad."""
        if not self.compile:
            return model
        graphs = self.cuda_graphs and self.device.type == "cuda" and not inference
        return CompiledOrEager(model, inference=inference, mode="reduce-overhead" if graphs else None)

    def to_dict(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compile, "cuda_graphs": self.cuda_graphs}


class CompiledOrEager(torch.nn.Module):
    """``torch.compile(module)`` that, if compilation fails (no C++ compiler, an unsupported platform or operator),
    warns once and runs ``module`` eagerly from then on. Parameters and state dict are ``module``'s own."""

    def __init__(self, module: torch.nn.Module, *, inference: bool = False, mode: str | None = None):
        super().__init__()
        self.module = module
        options = {"freezing": True} if inference else None
        # mode None: inductor's default. "reduce-overhead" (CUDA graphs) replays each captured pass from static
        # buffers: an output is overwritten by the next replay, so a caller must not keep one across steps (the
        # trainer computes the loss and the error count from the logits in the same step, eagerly).
        self.compiled = torch.compile(module, options=options, mode=mode)
        self.failed: str | None = None

    def forward(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure; a real model error re-raises below
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                self.failed = f"{type(e).__name__}: {first}"[:300]
                warnings.warn(f"torch.compile failed ({self.failed}); running eagerly (pass --no-compile to skip)",
                              RuntimeWarning, stacklevel=2)
        return self.module(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.module.load_state_dict(*args, **kwargs)


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with every conv -> BN pair folded into one convolution (torch.fx), using the
    BN running statistics; ``model`` itself is left unchanged (mode included). A model that cannot be traced is
    copied unfused, with a warning."""
    # torch.fx's optimisation helpers are imported only when BN is folded
    from torch.fx.experimental.optimization import fuse

    was_training = model.training
    model.eval()
    try:
        return fuse(model, inplace=False).eval()
    except Exception as e:  # noqa: BLE001 - an untraceable model still runs, unfused
        warnings.warn(f"could not fold BN into the convolutions ({type(e).__name__}); running unfused",
                      RuntimeWarning, stacklevel=2)
        return copy.deepcopy(model).eval()
    finally:
        model.train(was_training)


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
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def default_compile(device: torch.device) -> bool:
    """Compile by default where it pays for its compile time (docs/speed.md): on CUDA GPUs. On CPU it does not:
    measured here (2-core AVX-512 BF16 CPU, bf16 + channels_last), inductor's training step is 0.97x eager for
    ResNet-20 and 1.03x for ResNet-50 after ~6 minutes of compiling; ``--compile`` still turns it on."""
    return device.type == "cuda" and triton_available()


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


# Named runtimes for ``--runtime`` (precision, channels_last); compilation is chosen apart (``--compile``).
RUNTIMES = {"fp32": ("fp32", False), "fp32-cl": ("fp32", True), "bf16": ("bf16", True), "bf16-nchw": ("bf16", False)}


def runtime_name(rt: Runtime) -> str:
    """The ``--runtime`` name of ``rt`` (``fp32-cl``, ``bf16``...), with ``+compile`` if it compiles."""
    name = next(k for k, v in RUNTIMES.items() if v == (rt.precision, rt.channels_last))
    return name + ("+compile" if rt.compile else "")


def named_runtime(name: str, device: str | torch.device = "auto", compile: bool | None = None) -> Runtime:
    """The runtime called ``name`` (a key of ``RUNTIMES``, optionally with ``+compile``) on ``device``."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    base, plus, suffix = name.partition("+")
    if base not in RUNTIMES or (plus and suffix != "compile"):
        raise UsageError(f"unknown runtime {name!r}; choose one of: auto, {', '.join(RUNTIMES)} (+compile)")
    precision, channels_last = RUNTIMES[base]
    if plus:
        compile = True
    return Runtime(dev, precision, channels_last, default_compile(dev) if compile is None else compile)


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: bool | None = None,
                    compile: bool | None = None) -> Runtime:
    dev = resolve_device(device)
    if precision not in ("auto", "bf16", "fp32"):
        raise UsageError(f"unknown precision {precision!r}; choose one of: auto, bf16, fp32")
    if precision == "auto":
        precision = "bf16" if native_bf16(dev) else "fp32"
    if channels_last is None:
        # NHWC is what oneDNN's bf16 kernels and cuDNN's tensor-core kernels want; in fp32 on an AVX2 CPU (emulated:
        # ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, one thread) ResNet-20 batch 128 trains at 1.15x NCHW and
        # infers at 1.42x with BN folded (NCHW with BN folded: 0.95x), ResNet-50 batch 32 infers at 1.35x.
        channels_last = True
    if compile is None:
        compile = default_compile(dev)
    return Runtime(dev, precision, channels_last, compile)


def default_workers(limit: int = 4) -> int:
    """Data-loader processes when not told: one per core this process may run on, at most ``limit``. More workers
    than cores only queue for them (and PyTorch's DataLoader warns about it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(limit, cores))


def configure_kernels(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide kernel choices for a training run: with ``deterministic``, deterministic algorithms only (warning
    where an operation has none) and no cuDNN autotuning; otherwise cuDNN picks the fastest convolution algorithms for
    the run's fixed shapes on CUDA (``cudnn.benchmark``)."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
