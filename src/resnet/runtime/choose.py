"""The runtime a command runs with: the one function that ``resnet train``, ``eval``, ``predict`` and ``bench`` ask,
so that a flag means the same in each."""

from __future__ import annotations

import os
from typing import Callable

from . import autotune
from .autotune import Workload
from .settings import Choice, Runtime, named_runtime, resolve_device, resolve_runtime


def select_runtime(device: str = "auto", runtime: str = "auto", precision: str = "auto",
                   channels_last: bool | None = None, compile: bool | None = None, *, workload: Workload | None = None,
                   log: Callable[[str], None] | None = None) -> Choice:
    """The runtime of a command's flags. ``runtime`` names one (``fp32``, ``fp32-cl``, ``bf16``...), and the flags
    ``precision``, ``channels_last``, ``compile`` override its parts. With ``runtime="auto"`` and no flag, on a CPU in
    a single process, the choice is measured on ``workload`` (``autotune.tune_runtime``); without a workload to time,
    or elsewhere, it is the fixed default (``resolve_runtime``: bf16 + channels_last where native; CUDA compiles;
    the ranks of a distributed job must agree)."""
    dev = resolve_device(device)
    if runtime != "auto":
        rt = named_runtime(runtime, dev, compile)
        if precision != "auto" or channels_last is not None:
            rt = Runtime(dev, rt.precision if precision == "auto" else precision,
                         rt.channels_last if channels_last is None else channels_last, rt.compile)
        return Choice(rt, f"--runtime {runtime}")
    flags = precision != "auto" or channels_last is not None or compile is not None
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if flags or workload is None or dev.type != "cpu" or distributed:
        rt = resolve_runtime(str(dev), precision, channels_last, compile)
        why = ("set by the flags" if flags else "the default" if workload is None else
               "the default on this device" if dev.type != "cpu" else "the default (not tuned in a distributed job)")
        return Choice(rt, why)
    return autotune.tune_runtime(workload, dev, log=log)
