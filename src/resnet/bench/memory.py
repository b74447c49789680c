"""Peak memory of one side of a benchmark, measured in a process of its own (``python -m resnet.bench.memory SPEC``).

CPU: the resident-set high-water mark (``VmHWM``) of the measured steps, reset after the warm-up (compilation has its
own, one-off peak), above the resident memory before the model was built. CUDA: ``torch.cuda.max_memory_allocated``
over the measured steps (weights, optimiser state, activations, workspaces). Prints one JSON line.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys

import torch

from ..models import model_config
from ..runtime import Runtime
from .speed import build_side


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak resident set size to the current one
        return True
    except OSError:
        return False


def _peak_rss_kb() -> int:
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    # resource is Unix-only, and needed only where /proc is missing
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, kB on Linux


def measure(spec: dict) -> dict:
    if spec["runtime"]["compile"]:
        # The compiler's code is imported on every side of a compiled benchmark, before the baseline: the figure is
        # the memory of the model's steps, not of libraries.
        importlib.import_module("torch._dynamo")
        importlib.import_module("torch._inductor.compile_fx")

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    r = spec["runtime"]
    rt = Runtime(torch.device(r["device"]), r["precision"], r["channels_last"], r["compile"])
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = model_config(spec["model"], variant=spec.get("variant"))
    gc.collect()
    base_kb = _status_kb("VmRSS") or 0
    side = build_side(spec["side"], cfg, spec["mode"], spec["batch_size"], rt, spec.get("seed", 0))
    for _ in range(spec["warmup"]):
        side.step()
    gc.collect()
    cuda = rt.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(rt.device)
        torch.cuda.reset_peak_memory_stats(rt.device)
    reset = _reset_hwm()
    for _ in range(spec["steps"]):
        side.step()
    if cuda:
        torch.cuda.synchronize(rt.device)
        return {"peak_mb": torch.cuda.max_memory_allocated(rt.device) / 2**20, "what": "cuda max_memory_allocated"}
    return {"peak_mb": (_peak_rss_kb() - base_kb) / 1024,
            "what": "VmHWM of the measured steps above VmRSS before the model" + ("" if reset else
                                                                                  " (including the warm-up)")}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
