"""Where and how the numbers are computed: device, precision, memory layout, compilation.

One place decides the fast defaults, so that training, evaluation and the benchmarks agree (figures: docs/speed.md):

- bf16 autocast where the hardware runs it natively (CPUs with AVX-512 BF16 / AMX through oneDNN, CUDA GPUs with
  bf16), fp32 on request (``--precision fp32``) or where bf16 would be emulated;
- channels_last (NHWC) everywhere: the layout oneDNN's bf16 and cuDNN's tensor-core kernels want, and on CPUs without
  native bf16 the faster fp32 layout too (AVX2, fp32, one thread: ResNet-20 training 1.15x NCHW, inference with BN
  folded 1.42x; ResNet-50 inference 1.35x; docs/speed.md);
- on CPU, ``--runtime auto`` measures the candidates instead of trusting these defaults (``autotune.py``);
- ``torch.compile`` (inductor) by default where it pays for its compile time: CUDA GPUs (with Triton). On CPU it is
  off by default (no gain for the training step, see ``default_compile``) and on with ``--compile``. A compile that
  fails at run time falls back to eager with one warning line;
- CUDA graphs (inductor's ``reduce-overhead`` mode) on request (``--cuda-graphs``, training on CUDA only): one graph
  launch per forward and backward pass instead of hundreds of kernel launches, which is what bounds the small CIFAR
  nets at batch 128 on a fast GPU (not measured here: no GPU);
- for inference (``Runtime.prepare_inference``), BN folded into the convolutions; compiled with frozen weights if
  compiling.

The modules, one job each: ``hardware.py`` (what the machine runs natively), ``settings.py`` (the ``Runtime`` value,
the named runtimes, the fixed defaults, a ``Choice`` and its reason), ``compiled.py`` (``torch.compile`` with an eager
fallback), ``autotune.py`` (timing the candidates) and ``cache.py`` (the choices remembered), ``choose.py``
(``select_runtime``: the runtime of a command's flags, the one function every command asks).
"""

from .autotune import Workload, candidates, tune_runtime
from .choose import select_runtime
from .compiled import CompiledOrEager
from .hardware import cpu_capability, cpu_has_bf16_instructions, native_bf16, triton_available, yardstick_dtype
from .settings import (RUNTIMES, Choice, Runtime, configure_kernels, default_compile, named_runtime, resolve_device,
                       resolve_runtime, runtime_name)

__all__ = ["RUNTIMES", "Choice", "CompiledOrEager", "Runtime", "Workload", "candidates", "configure_kernels",
           "cpu_capability", "cpu_has_bf16_instructions", "default_compile", "named_runtime", "native_bf16",
           "resolve_device", "resolve_runtime", "runtime_name", "select_runtime", "triton_available", "tune_runtime",
           "yardstick_dtype"]
