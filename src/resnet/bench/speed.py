"""Images per second of the project's training step and inference, next to a reference measured in the same run.

The reference (``reference.py``) is the same network as plain eager fp32 PyTorch in NCHW. Both sides train on the
same synthetic data: CIFAR nets draw each step's batch through the trainer's own in-memory pipeline (index gather,
padding, crop, flip, mean subtraction; ``data.batches.InMemoryBatches``), so that the figure is what ``resnet train``
gets; ImageNet nets step on one fixed batch (the trainer decodes their JPEGs in worker processes, beside the step).
Their steps are timed in alternating rounds (reference, ours, ours, reference, ...) with a square
matmul sampled in every round, so that slow drifts of the machine (clocks, neighbours on a shared host) hit every
figure alike; each figure is the median over rounds. Peak memory is measured for each side in a fresh process
(``memory.py``), because a process's high-water mark cannot be split between two models living in it.

FLOPs follow the paper's convention (multiply-adds of the convolutions and the fc, ``count_macs``): a forward pass is
2 x MACs floating-point operations, a training step 3 x that (the backward pass costs two forwards).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..data.batches import InMemoryBatches
from ..data.normalize import Normalization
from ..models import build_model, count_macs, fused, model_config
from ..models.resnet import ModelConfig
from ..runtime import Runtime, cpu_capability, native_bf16, select_runtime, yardstick_dtype
from ..training.runtime_choice import workload
from ..training.recipes import CIFAR_PAPER
from ..training.step import build_sgd, train_step
from .matmul import MatmulProbe
from .reference import check_reference, reference_model

MODES = ("train", "eval")
logger = logging.getLogger(__name__)
SIDES = ("reference", "ours", "ours_eager")


@dataclass(frozen=True)
class BenchConfig:
    mode: str = "train"
    model: str = "resnet20"
    variant: str | None = None
    batch_size: int | None = None  # default: 128 on CIFAR nets, 32 on ImageNet nets
    device: str = "auto"
    runtime: str = "auto"  # "auto": measured (runtime.autotune); or a name (fp32, fp32-cl, bf16...)
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    steps: int = 20  # measured steps of each side
    warmup: int = 3  # steps of each side before timing (the first one compiles)
    rounds: int = 5
    memory: bool = True
    matmul_size: int | None = None  # default: 2048 on CPU, 8192 on CUDA
    threads: int | None = None  # CPU threads (torch.set_num_threads); default: PyTorch's (one per core)
    seed: int = 0


@dataclass
class Side:
    name: str
    description: str
    step: Callable[[], None]
    model: torch.nn.Module
    forward: Callable  # the model as called: compiled, or the model itself


def _sig(x: float, digits: int = 5) -> float:
    """A figure rounded to significant digits, so that small and large ones keep the same relative precision."""
    return float(f"{x:.{digits}g}")


def default_batch_size(cfg: ModelConfig) -> int:
    return 128 if cfg.family == "cifar" else 32


def _batches(cfg: ModelConfig, batch_size: int, device: torch.device, channels_last: bool, seed: int):
    """The trainer's batch pipeline over synthetic uint8 images (a few batches' worth, reshuffled every epoch)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (8 * batch_size, 3, cfg.input_size, cfg.input_size), dtype=torch.uint8,
                           generator=g)
    labels = torch.randint(0, cfg.num_classes, (len(images),), generator=g)
    stream = InMemoryBatches(images, labels, Normalization.mean_image(images), batch_size, seed=seed, device=device,
                             channels_last=channels_last).iterate(0)
    return lambda: next(stream)


def _batch(cfg: ModelConfig, batch_size: int, device: torch.device, channels_last: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, cfg.input_size, cfg.input_size, generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (batch_size,), generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def paper_sgd(params) -> torch.optim.SGD:
    """The paper's optimiser (Sec. 3.4 / 4.2), built by the trainer's own helper from the paper's CIFAR recipe: SGD,
    lr 0.1, momentum 0.9, decay 1e-4."""
    return build_sgd(params, CIFAR_PAPER)


def build_side(name: str, cfg: ModelConfig, mode: str, batch_size: int, rt: Runtime, seed: int = 0) -> Side:
    """One side of the comparison, ready to step: ``reference`` (plain eager fp32 NCHW), ``ours`` (the project's
    default runtime ``rt``) or ``ours_eager`` (the same without torch.compile)."""
    torch.manual_seed(seed)
    device = rt.device
    if name == "reference":
        model = reference_model(cfg).to(device)
        x, y = _batch(cfg, batch_size, device, False, seed)
        autocast, forward = None, model
        what = ("torchvision " if cfg.family == "imagenet" else "plain CIFAR ResNet, ") + "eager fp32 NCHW"
    else:
        if name == "ours_eager":
            rt = Runtime(rt.device, rt.precision, rt.channels_last, False)
        x, y = _batch(cfg, batch_size, device, rt.channels_last, seed)
        autocast = rt
        if mode == "eval":  # the project's inference path, `Runtime.prepare_inference`: BN folded, frozen if compiled
            model = build_model(cfg)
            forward = rt.prepare_inference(model)
        else:  # what the trainer runs
            model = rt.prepare(build_model(cfg))
            forward = rt.compile_model(model)
        what = ", ".join([rt.precision + (" autocast" if rt.precision == "bf16" else ""),
                          "channels_last" if rt.channels_last else "NCHW"]
                         + (["BN folded"] if mode == "eval" else [])
                         + (["fused BN+ReLU"] if mode == "train" and fused.trains_fused(rt.device, rt.channels_last, rt.compile) else [])
                         + ["compiled" + (" (frozen)" if mode == "eval" else "") if rt.compile else "eager"])

    def ctx():
        return autocast.autocast() if autocast is not None else contextlib.nullcontext()

    if mode == "train":
        model.train()
        optimizer = paper_sgd(model.parameters())
        channels_last = rt.channels_last and name != "reference"
        batch = (_batches(cfg, batch_size, device, channels_last, seed) if cfg.family == "cifar"
                 else lambda: (x, y))

        def step():  # the trainer's own batches and step (training.step.train_step), on both sides
            bx, by = batch()
            train_step(forward, optimizer, bx, by, autocast=ctx, label_smoothing=CIFAR_PAPER.label_smoothing)
    elif mode == "eval":
        model.eval()

        def step():
            with torch.no_grad(), ctx():
                forward(x)
    else:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return Side(name, what, step, model, forward)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], n: int, device: torch.device, cpu: list[float] | None = None) -> float:
    """Seconds per step over ``n`` steps; appends to ``cpu`` the process's CPU seconds per wall second."""
    _sync(device)
    c, t = time.process_time(), time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    wall = time.perf_counter() - t
    if cpu is not None:
        cpu.append((time.process_time() - c) / wall)
    return wall / n


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(bc: BenchConfig, log: Callable[[str], None] | None = None) -> dict:
    """Measure ``bc.mode`` ("train" or "eval") of ``bc.model`` against its reference; every figure in one dict."""
    log = log or (lambda s: None)
    if bc.mode not in MODES:
        raise ValueError(f"unknown mode {bc.mode!r}; choose one of {', '.join(MODES)}")
    cfg = model_config(bc.model, variant=bc.variant)
    if bc.threads:
        torch.set_num_threads(bc.threads)
    check_reference(cfg)
    batch_size = bc.batch_size or default_batch_size(cfg)
    choice = select_runtime(bc.device, bc.runtime, bc.precision, bc.channels_last, bc.compile,
                            workload=workload(cfg, bc.mode, batch_size), log=log)
    rt = choice.runtime
    log(f"runtime {choice.name} chosen")  # the reason is in the result's table, once
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer runs (for both sides)
    macs = count_macs(build_model(cfg), cfg.input_size)
    names = ["reference", "ours"] + (["ours_eager"] if rt.compile else [])
    sides, first = _build_and_warm_up(names, cfg, bc, batch_size, rt, log)
    n = bc.matmul_size or (8192 if rt.device.type == "cuda" else 2048)
    # The yardstick is the best native rate: bf16 only where the hardware multiplies it (an emulated bf16 product
    # runs at 0.6 GFLOP/s on an AVX2 CPU, and sampling it every round made this command take over 14 minutes there).
    yardstick = "bf16" if yardstick_dtype(rt.device) == torch.bfloat16 else "fp32"
    probes = {"fp32": MatmulProbe(torch.float32, n, rt.device)}
    if yardstick == "bf16":
        probes["bf16"] = MatmulProbe(torch.bfloat16, n, rt.device)
    rounds = max(1, min(bc.rounds, bc.steps))
    per_round = max(1, round(bc.steps / rounds))
    times, cpu = _time_rounds(sides, probes, rounds, per_round, batch_size, rt.device, log)
    mm = {k: p.gflops for k, p in probes.items()}
    result: dict = {
        "mode": bc.mode, "model": cfg.name, "variant": cfg.variant if cfg.block == "bottleneck" else None,
        "batch_size": batch_size, "input_size": cfg.input_size,
        "device": str(rt.device), "device_name": device_name(rt.device),
        "threads": torch.get_num_threads() if rt.device.type == "cpu" else None,
        "torch": torch.__version__, "cpu_capability": cpu_capability(rt.device),
        "native_bf16": native_bf16(rt.device), "runtime": dict(rt.to_dict(), name=choice.name),
        "runtime_choice": choice.to_dict(),
        "macs_per_image": macs, "flops_per_image": 2 * macs * (3 if bc.mode == "train" else 1),
        "steps": rounds * per_round, "warmup_steps": bc.warmup, "rounds": rounds,
        "matmul": {"size": n, "fp32_gflops": _sig(mm["fp32"]), "bf16_gflops": _sig(mm["bf16"]) if "bf16" in mm else None},
        "yardstick": {"dtype": yardstick, "gflops": _sig(mm[yardstick]), "what": f"{n}x{n} {yardstick} torch.matmul"},
    }
    if rt.device.type == "cpu":
        # CPU seconds per wall second over the timed rounds, per thread: near 1 on an idle machine; well below 1
        # when other processes took the cores (every figure is then lower than the machine can do).
        result["cpu_share"] = round(statistics.median(cpu) / torch.get_num_threads(), 3)
    for name, side in sides.items():
        result[name] = _side_figures(side, times[name], first[name], batch_size, result["flops_per_image"], mm,
                                     yardstick)
    result["speedup"] = _sig(result["ours"]["images_per_s"] / result["reference"]["images_per_s"])
    if rt.compile:
        result["compile"] = _compile_figures(result, first, sides["ours"])
    if bc.memory:
        _add_peak_memory(result, names, bc, rt, batch_size, log)
    return result


def _build_and_warm_up(names: list[str], cfg: ModelConfig, bc: BenchConfig, batch_size: int, rt: Runtime,
                       log: Callable[[str], None]) -> tuple[dict[str, Side], dict[str, float]]:
    """Each side, built and then stepped ``bc.warmup`` times untimed (at least once), and the seconds of each side's
    first step (where a compiled side compiles)."""
    sides, first = {}, {}
    for name in names:
        sides[name] = side = build_side(name, cfg, bc.mode, batch_size, rt, bc.seed)
        log(f"warming up {name} ({side.description})")
        first[name] = _timed(side.step, 1, rt.device)
        for _ in range(max(0, bc.warmup - 1)):
            side.step()
    return sides, first


def _time_rounds(sides: dict[str, Side], probes: dict[str, MatmulProbe], rounds: int, per_round: int,
                 batch_size: int, device: torch.device, log: Callable[[str], None]):
    """``per_round`` steps of each side per round, the sides in alternating order, and one yardstick sample per
    round: each side's seconds per step in each round, and the CPU share of every timing."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: list[float] = []
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(_timed(sides[name].step, per_round, device, cpu))
        for p in probes.values():
            p.sample()
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {batch_size / v[-1]:.1f} img/s" for k, v in times.items()))
    return times, cpu


def _side_figures(side: Side, times: list[float], first_s: float, batch_size: int, flops_per_image: int,
                  mm: dict[str, float], yardstick: str) -> dict:
    """One side's figures: images/s, step time, GFLOP/s and its share of the yardstick, from its median round."""
    step_s = statistics.median(times)
    ips = batch_size / step_s
    gflops = ips * flops_per_image / 1e9
    return {
        "description": side.description,
        "images_per_s": _sig(ips), "step_ms": _sig(1e3 * step_s),
        "step_ms_rounds": [_sig(1e3 * t) for t in times],
        "gflops": _sig(gflops),
        "fraction_of_yardstick": _sig(gflops / mm[yardstick]),
        "fraction_of_bf16_matmul": _sig(gflops / mm["bf16"]) if "bf16" in mm else None,
        "fraction_of_fp32_matmul": _sig(gflops / mm["fp32"]),
        "first_step_s": _sig(first_s),
        "peak_memory_mb": None,
    }


def _compile_figures(result: dict, first: dict[str, float], compiled: Side) -> dict:
    """What compiling bought: the speed-up over the same runtime eager, the compile time, and its payback."""
    eager, comp = result["ours_eager"], result["ours"]
    compile_s = max(0.0, first["ours"] - first["ours_eager"])
    saved_s = (eager["step_ms"] - comp["step_ms"]) / 1e3
    return {
        "compile_s": round(compile_s, 2),
        "speedup_over_eager": round(comp["images_per_s"] / eager["images_per_s"], 3),
        # Steps after which the compiled run has caught up with an eager one (None: it never does).
        "payback_steps": round(compile_s / saved_s) if saved_s > 0 else None,
        "fell_back_to_eager": bool(getattr(compiled.forward, "failed", None)),
    }


def _add_peak_memory(result: dict, names: list[str], bc: BenchConfig, rt: Runtime, batch_size: int,
                     log: Callable[[str], None]) -> None:
    for name in names:
        log(f"peak memory of {name} (fresh process)")
        result[name]["peak_memory_mb"] = peak_memory_mb(name, bc, rt, batch_size)
    ours, ref = result["ours"]["peak_memory_mb"], result["reference"]["peak_memory_mb"]
    result["memory_ratio"] = _sig(ours / ref) if ours and ref else None


def peak_memory_mb(side: str, bc: BenchConfig, rt: Runtime, batch_size: int, timeout: float = 1800) -> float | None:
    """Peak memory of ``side``'s steps, measured in a child process (see ``memory.py``)."""
    spec = {"side": side, "mode": bc.mode, "model": bc.model, "variant": bc.variant, "batch_size": batch_size,
            "runtime": rt.to_dict(), "warmup": max(1, bc.warmup), "steps": 3, "seed": bc.seed,
            "threads": torch.get_num_threads()}
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        out = subprocess.run([sys.executable, "-m", "resnet.bench.memory", json.dumps(spec)], capture_output=True,
                             text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            return _sig(float(json.loads(line)["peak_mb"]))
        except (ValueError, KeyError, TypeError):
            continue
    logger.warning(f"the memory probe of {side} failed:\n{out.stderr[-2000:]}")
    return None


def format_bench(r: dict) -> str:
    """The result of ``run_bench`` as a small table."""
    rt = r["runtime"]
    threads = f", {r['threads']} thread{'s' if r['threads'] > 1 else ''}" if r.get("threads") else ""
    head = (f"{r['model']}{' ' + r['variant'] if r.get('variant') else ''} {r['mode']}, batch {r['batch_size']} at "
            f"{r['input_size']}x{r['input_size']}, {r['device']} ({r['device_name']}{threads}), torch {r['torch']}, "
            f"{r['cpu_capability']}{'' if r['native_bf16'] else ', no native bf16'}")
    flops = "3 x 2 x MACs" if r["mode"] == "train" else "2 x MACs"
    yd = r["yardstick"]["dtype"]
    both = yd != "fp32"  # the fp32 rate too, where the yardstick is bf16
    lines = [head,
             f"runtime {r['runtime_choice']['runtime']} ({rt['precision']}, "
             f"{'channels_last' if rt['channels_last'] else 'NCHW'}, {'compiled' if rt['compile'] else 'eager'}): "
             f"{r['runtime_choice']['reason']}",
             f"{r['steps']} steps in {r['rounds']} alternating rounds after {r['warmup_steps']} warm-up; FLOPs per "
             f"image = {flops} = {r['flops_per_image'] / 1e9:.3g}e9",
             f"% {yd} mm: the step's GFLOP/s as a share of a large {yd} matrix product's on this device in the same "
             "run (the yardstick)" + (f"; % fp32 mm: the same against the fp32 product" if both else "")]
    cols = ("images/s", "step ms", "GFLOP/s", f"% {yd} mm") + (("% fp32 mm",) if both else ()) + ("peak MB",
                                                                                                 "1st step s")
    rows = []
    for name in SIDES:
        if name not in r:
            continue
        s = r[name]
        label = {"reference": "reference", "ours": "ours", "ours_eager": "ours, eager"}[name]
        rows.append((f"{label} ({s['description']})", f"{s['images_per_s']:.1f}", f"{s['step_ms']:.1f}",
                     f"{s['gflops']:.1f}", f"{100 * s['fraction_of_yardstick']:.0f}%")
                    + ((f"{100 * s['fraction_of_fp32_matmul']:.0f}%",) if both else ())
                    + ("-" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}", f"{s['first_step_s']:.1f}"))
    w0 = max(len(row[0]) for row in rows)
    widths = [max(len(c), max(len(row[i + 1]) for row in rows)) for i, c in enumerate(cols)]
    lines.append(" " * w0 + "  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in rows:
        lines.append(row[0].ljust(w0) + "  " + "  ".join(v.rjust(w) for v, w in zip(row[1:], widths)))
    tail = f"ours / reference: {r['speedup']:.2f}x images/s"
    if r.get("memory_ratio") is not None:
        tail += f", {r['memory_ratio']:.2f}x peak memory"
    lines.append(tail)
    if "compile" in r:
        c = r["compile"]
        pays = "never pays back" if c["payback_steps"] is None else f"pays back after {c['payback_steps']} steps"
        lines.append(f"torch.compile: {c['speedup_over_eager']:.2f}x over eager, about {c['compile_s']:.0f} s to "
                     f"compile, {pays}" + (" (compile failed: ran eagerly)" if c.get("fell_back_to_eager") else ""))
    if r.get("cpu_share") is not None and r["cpu_share"] < 0.85:
        lines.append(f"note: this process got {100 * r['cpu_share']:.0f}% of the CPU time of its {r['threads']} "
                     "thread(s): the machine was busy, so absolute figures are low; the ratios were measured side by "
                     "side")
    mm = r["matmul"]
    rates = ([f"bf16 {mm['bf16_gflops']:.0f} GFLOP/s"] if mm.get("bf16_gflops") else []) + [
        f"fp32 {mm['fp32_gflops']:.0f} GFLOP/s"]
    lines.append(f"yardstick: {yd} matmul {mm['size']}x{mm['size']} on this device, same run: {', '.join(rates)}"
                 + ("" if both else " (no native bf16 here: bf16 not timed)"))
    return "\n".join(lines)
