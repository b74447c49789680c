"""A runtime as a value: the device, the precision, the memory layout and whether the model is compiled; the named
runtimes of ``--runtime``, the fixed defaults, and a chosen runtime with the reason it was chosen."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..errors import UsageError
from ..models.fold import fold_batchnorm
from .compiled import CompiledOrEager
from .hardware import native_bf16, triton_available


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


# Named runtimes for ``--runtime`` (precision, channels_last); compilation is chosen apart (``--compile``).
RUNTIMES = {"fp32": ("fp32", False), "fp32-cl": ("fp32", True), "bf16": ("bf16", True), "bf16-nchw": ("bf16", False)}


def runtime_name(rt: Runtime) -> str:
    """The ``--runtime`` name of ``rt`` (``fp32-cl``, ``bf16``...), with ``+compile`` if it compiles."""
    name = next(k for k, v in RUNTIMES.items() if v == (rt.precision, rt.channels_last))
    return name + ("+compile" if rt.compile else "")


@dataclass
class Choice:
    """The runtime chosen, and why (one line, for the user)."""

    runtime: Runtime
    reason: str
    timings_ms: dict[str, float | None] = field(default_factory=dict)  # ms per step by candidate; None: failed
    cached: bool = False
    cpu_share: float | None = None  # CPU time / (wall time x threads) while the rounds were timed

    @property
    def name(self) -> str:
        return runtime_name(self.runtime)

    def to_dict(self) -> dict:
        return {"runtime": self.name, "reason": self.reason, "timings_ms": self.timings_ms, "cached": self.cached}


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
    """The fixed default runtime on ``device``, with the parts given overriding it: bf16 where it is native (else
    fp32), channels_last, compiled where compiling is the default (``default_compile``)."""
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


def configure_kernels(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide kernel choices for a training run: with ``deterministic``, deterministic algorithms only (warning
    where an operation has none) and no cuDNN autotuning; otherwise cuDNN picks the fastest convolution algorithms for
    the run's fixed shapes on CUDA (``cudnn.benchmark``)."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
