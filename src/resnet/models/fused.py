"""``relu(BN(x) + s)`` in one place: every BN of the paper's nets is followed by a ReLU, directly or after the
shortcut addition (Fig. 2, Fig. 5), and every block calls :func:`bn_relu` for it.

In training on a CPU, with channels_last activations (the default layout on every CPU kind), this runs a fused kernel
(``bn_relu.cpp``, compiled on first use with the machine's C++ compiler: about a minute, once per machine kind and
torch version, in ``torch_extensions/`` under the package's cache root, ``resnet.files.cache_root``): two passes over
memory forward and two backward, where PyTorch's separate BN, addition and ReLU make five and five. What it buys,
per CPU kind: docs/speed.md ("Fused BN + ReLU"). It computes the same function (the tests compare both with
PyTorch's ops in float64, forward and backward) and updates the running statistics as ``nn.BatchNorm2d`` does.

Everywhere else PyTorch's own ops run, unchanged: evaluation (BN is folded into the convolutions there), NCHW
tensors, CUDA, ``torch.compile`` and ``torch.fx`` tracing, BN modules with hooks or subclasses, and machines where
the kernel does not build (no compiler; one warning, then the fallback for the rest of the process).
``RESNET_FUSED_BN=0`` turns the kernel off (to measure what it buys, or to rule it out).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..files import cache_root

_SOURCE = Path(__file__).with_name("bn_relu.cpp")
_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
_ISA_FLAGS = {"AVX2": ["-mavx2", "-mfma", "-mf16c"],
              "AVX512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]}


# Set inside an ``off()`` block: a context variable, so that a block turns the kernel off for its own thread or task
# only, and the setting is restored however the block ends.
_switched_off = contextvars.ContextVar("fused_bn_relu_switched_off", default=False)
log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether the kernel may run here: not inside an ``off()`` block, and not turned off by ``RESNET_FUSED_BN=0``."""
    return not _switched_off.get() and os.environ.get("RESNET_FUSED_BN", "1") != "0"


@contextlib.contextmanager
def off():
    """PyTorch's separate ops inside this block (to measure what the kernel buys, side by side)."""
    token = _switched_off.set(True)
    try:
        yield
    finally:
        _switched_off.reset(token)


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled kernel, or None where it cannot be built (warned once). Built once per machine kind, source and
    torch version into :func:`build_directory` (about a minute the first time, said in one ``resnet.*`` log line)."""
    # Importing torch.utils.cpp_extension warns that there is no CUDA runtime, which says nothing about a CPU kernel.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load  # slow (setuptools): only when first needed

    # Vectorized for the instruction set PyTorch's own kernels use here. The name carries it, and the source's hash:
    # processes running different versions of the source (a campaign started from older code, a test run of a fresh
    # clone) each keep their own build, instead of rebuilding over each other in torch's cache for a minute each time.
    capability = torch.backends.cpu.get_cpu_capability()
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:10]
    name = f"resnet_bn_relu_{capability.lower()}_{digest}"
    flags = ["-O3", *_ISA_FLAGS.get(capability, [])]
    try:
        folder = build_directory(name)
        folder.mkdir(parents=True, exist_ok=True)
        # A build killed half-way (a session's end) leaves torch's lock file behind, and every later load would wait
        # on it for ever; a build takes about a minute, so a lock older than ten minutes is stale.
        lock = folder / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > 600:
            lock.unlink(missing_ok=True)
        if not any((folder / f"{name}{ext}").exists() for ext in (".so", ".pyd")):
            log.info(f"building the fused CPU kernel (once, about a minute) in {folder}")
        return load(name=name, sources=[str(_SOURCE)], extra_cflags=flags, build_directory=str(folder),
                    verbose=False)
    except Exception as e:  # noqa: BLE001 - no compiler, or one that fails: PyTorch's ops still compute the same
        lines = str(e).splitlines() or [""]
        reason = next((line.strip() for line in lines if "error" in line.lower() and "building" not in line.lower()),
                      lines[0])
        warnings.warn(f"the fused BN+ReLU kernel did not build ({type(e).__name__}: {reason[:200]}); running "
                      "PyTorch's separate ops (a C++ compiler, e.g. g++, builds it)", RuntimeWarning, stacklevel=3)
        return None


def build_directory(name: str) -> Path:
    """Where the kernel ``name`` is built: under the package's one cache root (``resnet.files.cache_root``), one folder
    per Python and torch version (a build links against both)."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / "torch_extensions" / f"{python}_torch{torch.__version__}" / name


def trains_fused(device: torch.device, channels_last: bool, compiled: bool) -> bool:
    """Whether training on ``device`` in this layout, compiled or not, runs the kernel: CPU, channels_last, eager, and
    the kernel built here."""
    return device.type == "cpu" and channels_last and not compiled and enabled() and extension() is not None


class _BNReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shortcut, running_mean, running_var, momentum, eps):
        y, mean, invstd = extension().forward(x, weight, bias, shortcut, running_mean, running_var, momentum, eps)
        ctx.save_for_backward(x, y, mean, invstd, weight)
        ctx.has_shortcut = shortcut is not None
        return y

    @staticmethod
    @once_differentiable  # a second derivative through the kernel raises instead of coming out wrong
    def backward(ctx, grad):
        x, y, mean, invstd, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        gx, gw, gb, gs = extension().backward(grad, y, x, mean, invstd, weight, ctx.has_shortcut)
        return gx, gw, gb, (gs if ctx.has_shortcut else None), None, None, None, None


def fusable(bn: nn.Module, x, shortcut=None) -> bool:
    """Whether :func:`bn_relu` runs the fused kernel for these arguments (else PyTorch's ops)."""
    if not (isinstance(x, torch.Tensor) and type(bn) is nn.BatchNorm2d and bn.training):
        return False  # a torch.fx Proxy, a subclass (SyncBatchNorm, ...), evaluation
    if bn._forward_hooks or bn._forward_pre_hooks or not bn.affine or not bn.track_running_stats or bn.momentum is None:
        return False
    if bn.running_mean.dtype not in (torch.float32, torch.float64):  # the kernel keeps the statistics in fp32 or fp64
        return False
    if x.device.type != "cpu" or x.dtype not in _DTYPES or x.dim() != 4 or x.numel() == 0:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return False  # NCHW (a 1x1 map is both: PyTorch's ops then)
    if shortcut is not None and (shortcut.shape != x.shape or shortcut.dtype != x.dtype):
        return False
    if torch.compiler.is_compiling() or not enabled():
        return False
    return extension() is not None


def bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(bn(x) + shortcut)``, or ``relu(bn(x))`` without a shortcut."""
    if fusable(bn, x, shortcut):
        bn.num_batches_tracked.add_(1)
        if shortcut is not None:  # the kernel reads it as x: channels_last (a no-op for the paper's shortcuts)
            shortcut = shortcut.contiguous(memory_format=torch.channels_last)
        return _BNReLU.apply(x, bn.weight, bn.bias, shortcut, bn.running_mean, bn.running_var, bn.momentum, bn.eps)
    out = bn(x)
    if shortcut is not None:
        # In place, as torchvision's blocks add: no fresh activation-sized buffer per block (its first touch costs
        # page faults; ResNet-50 training measured 1.05x, twice, one thread). BN's backward needs its input, not its
        # output, so overwriting the output is safe for autograd.
        out += shortcut
    return F.relu(out, inplace=True)

