"""``--runtime auto``: time a few steps of each candidate runtime on this machine, keep the fastest, remember it.

Which runtime is fastest depends on the processor (native bf16 or not), the network and the batch: on an AVX2 CPU
without bf16, fp32 channels_last and fp32 NCHW are close, and which one wins changes with the layer shapes
(docs/speed.md). So the choice is measured, not guessed: every candidate (bf16 only where the hardware runs it
natively; NCHW and channels_last) runs one warm-up step and then steps in alternating rounds, on a synthetic batch of
the real size; the fastest median wins. A candidate that raises or gives a non-finite loss is skipped. The choice is
cached in ``$RESNET_CACHE/runtime-choices.json`` (``~/.cache/resnet``) per CPU capability, torch version, model,
batch size, mode and thread count, so later runs start at once. Candidates differ only in precision and memory layout,
so the choice changes no result beyond what bf16 autocast already may.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import torch

from ..files import cache_root
from ..models import build_model, fused, model_config
from ..models.resnet import ModelConfig
from ..runtime import (RUNTIMES, Runtime, cpu_capability, default_compile, named_runtime, native_bf16,
                       resolve_device, resolve_runtime, runtime_name)
from . import step
from .recipes import resolve_recipe

CACHE_FILE = "runtime-choices.json"
# Timings are trusted only if the timing process got at least this share of the CPU time its threads could use (wall
# time x threads). On an oversubscribed machine OpenMP threads wait for descheduled siblings and a step can take 40x
# its time, in whichever candidate happens to be unlucky: seen here, a loaded 2-core AVX-512 BF16 CPU "measured"
# fp32 at 8.1 s per ResNet-20 step and bf16 at 36 s, where an idle one measures 0.43 s and 0.23 s.
MIN_CPU_SHARE = 0.75
MIN_TUNED_ITERATIONS = 500  # shorter training runs keep the fixed default (tuning costs a few dozen steps)


@dataclass
class Choice:
    """The runtime chosen, and why (one line, for the user)."""

    runtime: Runtime
    reason: str
    timings_ms: dict[str, float | None] = field(default_factory=dict)  # median ms per step; None: failed or dropped
    cached: bool = False
    cpu_share: float | None = None  # CPU time / (wall time x threads) while the rounds were timed

    @property
    def name(self) -> str:
        return runtime_name(self.runtime)

    def to_dict(self) -> dict:
        return {"runtime": self.name, "reason": self.reason, "timings_ms": self.timings_ms, "cached": self.cached}


def candidates(device: torch.device) -> list[Runtime]:
    """The runtimes worth timing on ``device``: bf16 only where it is native (an emulated bf16 step is many times
    slower and is never chosen), each in both layouts; compiled only where compiling is the default (its compile
    time is minutes on CPU, so it is not tuned there; docs/speed.md)."""
    compile = default_compile(device)
    names = (["bf16", "bf16-nchw"] if native_bf16(device) else []) + ["fp32-cl", "fp32"]
    return [named_runtime(n, device, compile) for n in names]


def autotune(cands: list[Runtime], make_step: Callable[[Runtime], Callable[[], object]], *, rounds: int = 5,
             min_rounds: int = 2, drop_ratio: float = 2.0, budget_s: float = 20.0,
             log: Callable[[str], None] | None = None) -> Choice:
    """The fastest of ``cands``: ``make_step(rt)`` builds one step (returning its loss or output); each candidate runs
    one warm-up step, then one step per round in alternating order, and is judged by its fastest step (on a shared
    machine the neighbours only ever add time). A candidate over ``drop_ratio`` times the fastest, after its warm-up
    step (by ``1.5 * drop_ratio``) or after the first round, is dropped: it cannot win. Rounds stop after
    ``min_rounds`` once ``budget_s`` seconds of rounds are spent. A candidate that raises, or whose step returns a
    non-finite value, is skipped. Raises RuntimeError if every candidate fails."""
    log = log or (lambda s: None)
    steps: dict[str, Callable[[], object]] = {}
    timings: dict[str, float | None] = {}
    failures: dict[str, str] = {}
    warm: dict[str, float] = {}
    for rt in cands:
        name = runtime_name(rt)
        try:
            step = make_step(rt)
            t = time.perf_counter()
            _check(step())  # warm-up: one-off costs (oneDNN primitives, first touch of buffers)
        except Exception as e:  # noqa: BLE001 - any failure rules the candidate out
            failures[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200]
            timings[name] = None
            log(f"runtime {name} failed ({failures[name]}); skipped")
            continue
        steps[name] = step
        warm[name] = time.perf_counter() - t
    if not steps:
        raise RuntimeError("every candidate runtime failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    fastest = min(warm.values())
    for name, t in warm.items():
        if t > 1.5 * drop_ratio * fastest:
            failures[name] = f"dropped after its warm-up step ({t / fastest:.2f}x the fastest)"
    samples: dict[str, list[float]] = {name: [] for name in steps}
    start, cpu_start = time.perf_counter(), time.process_time()
    for r in range(rounds):
        live = [n for n in steps if n not in failures]
        for name in (live if r % 2 == 0 else live[::-1]):
            t = time.perf_counter()
            try:
                _check(steps[name]())
            except Exception as e:  # noqa: BLE001
                failures[name] = f"{type(e).__name__}: {e}"[:200]
                continue
            samples[name].append(time.perf_counter() - t)
        if r == 0 and len(live) > 1:
            best = min(s[0] for n, s in samples.items() if s and n not in failures)
            for name in live:
                if name not in failures and samples[name] and samples[name][0] > drop_ratio * best:
                    failures[name] = f"dropped after one round ({samples[name][0] / best:.2f}x the fastest)"
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    cpu_share = (time.process_time() - cpu_start) / max(1e-9, (time.perf_counter() - start) * torch.get_num_threads())
    for name, s in samples.items():
        timings[name] = round(1e3 * min(s), 1) if s else (round(1e3 * warm[name], 1) if name in warm else None)
    valid = {n: samples[n] for n in samples if samples[n] and (n not in failures or failures[n].startswith("dropped"))}
    if not valid:
        raise RuntimeError("every candidate runtime failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    best = min(valid, key=lambda n: min(valid[n]))
    chosen = next(rt for rt in cands if runtime_name(rt) == best)
    others = sorted((timings[n], n) for n in timings if n != best and timings[n] is not None)
    why = f"the fastest of {len(cands)} timed here ({best} {timings[best]:.0f} ms/step"
    why += "".join(f", {n} {t:.0f}" for t, n in others)
    why += "".join(f", {n} failed" for n in failures if not failures[n].startswith("dropped")) + "; fastest step)"
    return Choice(chosen, why, timings, cpu_share=round(cpu_share, 2))


def _check(value) -> None:
    if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.detach().float()).all()):
        raise FloatingPointError("non-finite result")


def make_synthetic_step(cfg: ModelConfig, mode: str, batch_size: int) -> Callable[[Runtime], Callable[[], object]]:
    """``make_step`` for ``autotune``: the training step (forward, cross-entropy, backward, the paper's SGD step) or
    inference (BN folded, as ``Runtime.prepare_inference``) of a fresh ``cfg`` network on one random batch."""

    def make_step(rt: Runtime) -> Callable[[], object]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, 3, cfg.input_size, cfg.input_size, generator=g).to(rt.device)
        y = torch.randint(0, cfg.num_classes, (batch_size,), generator=g).to(rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build_model(cfg)
        if mode == "eval":
            with torch.no_grad():
                model = rt.prepare_inference(net)

            def infer():
                with torch.no_grad(), rt.autocast():
                    return model(x)[0, 0]
            return infer
        model = rt.compile_model(rt.prepare(net))
        opt = step.build_sgd(model.parameters(), resolve_recipe("paper", cfg.family, cfg.depth))

        def train_step():  # the trainer's own step: what is timed is what is run
            return step.train_step(model, opt, x, y, autocast=rt.autocast)[0]
        return train_step

    return make_step


def cache_key(device: torch.device, cfg: ModelConfig, mode: str, batch_size: int) -> str:
    model = cfg.name + (f" {cfg.variant}" if cfg.block == "bottleneck" else "") + f" shortcut {cfg.shortcut}"
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    capability = cpu_capability(device) + (" bf16" if native_bf16(device) else "")
    return " | ".join([capability, f"torch {torch.__version__}", model, f"batch {batch_size}", mode,
                       f"{threads} threads"])


def _cache_path() -> Path:
    return cache_root() / CACHE_FILE


def _read_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = entry
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the choice is measured again next time


def tune_runtime(cfg: ModelConfig, mode: str, batch_size: int, device: torch.device, *,
                 make_step: Callable[[Runtime], Callable[[], object]] | None = None, cache: bool = True,
                 log: Callable[[str], None] | None = None) -> Choice:
    """The fastest candidate runtime for ``cfg`` in ``mode`` ("train" or "eval") at ``batch_size`` on ``device``:
    from the cache if it was measured before under the same key, else measured now (``autotune``) and cached."""
    cands = candidates(device)
    if len(cands) == 1:
        return Choice(cands[0], f"the only candidate on {cpu_capability(device)}")
    key = cache_key(device, cfg, mode, batch_size)
    names = [runtime_name(rt) for rt in cands]
    entry = _read_cache().get(key) if cache else None
    if entry and entry.get("runtime") in names:
        rt = cands[names.index(entry["runtime"])]
        return Choice(rt, f"measured on {entry.get('date', '?')}: {entry.get('reason', '')} [cached in "
                          f"{_cache_path()}]", entry.get("timings_ms", {}), cached=True)
    if mode == "train" and device.type == "cpu":
        fused.extension()  # the kernel's first build (about a minute) is not a candidate's time
    with torch.random.fork_rng(devices=[]):
        choice = autotune(cands, make_step or make_synthetic_step(cfg, mode, batch_size), log=log)
    if choice.cpu_share is not None and choice.cpu_share < MIN_CPU_SHARE:
        # A busy machine: the timings say more about the neighbours than about the runtimes. Not cached.
        return Choice(resolve_runtime(str(device)), f"the default: the machine is busy (this process got "
                      f"{100 * choice.cpu_share:.0f}% of the CPU time of its {torch.get_num_threads()} threads while "
                      "timing the candidates), so their timings were not trusted nor cached", choice.timings_ms,
                      cpu_share=choice.cpu_share)
    choice.reason = f"{cpu_capability(device)}{'' if native_bf16(device) else ', no native bf16'}: {choice.reason}"
    if cache:
        _write_cache(key, {"runtime": choice.name, "reason": choice.reason, "timings_ms": choice.timings_ms,
                           "date": date.today().isoformat()})
    return choice


def select_runtime(cfg: ModelConfig, mode: str, batch_size: int, *, device: str = "auto", runtime: str = "auto",
                   precision: str = "auto", channels_last: bool | None = None, compile: bool | None = None,
                   tune: bool = True, log: Callable[[str], None] | None = None) -> Choice:
    """The runtime a command runs with. ``runtime`` names one (``fp32``, ``fp32-cl``, ``bf16``...), and the flags
    ``precision``, ``channels_last``, ``compile`` override its parts; with ``runtime="auto"`` and no flag, on a CPU in
    a single process, the choice is measured (``tune_runtime``); elsewhere it is the fixed default
    (``resolve_runtime``: bf16 + channels_last where native; CUDA compiles; ranks of a distributed job must agree)."""
    dev = resolve_device(device)
    if runtime != "auto":
        rt = named_runtime(runtime, dev, compile)
        if precision != "auto" or channels_last is not None:
            rt = Runtime(dev, rt.precision if precision == "auto" else precision,
                         rt.channels_last if channels_last is None else channels_last, rt.compile)
        return Choice(rt, f"--runtime {runtime}")
    flags = precision != "auto" or channels_last is not None or compile is not None
    if flags or not tune or dev.type != "cpu" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rt = resolve_runtime(str(dev), precision, channels_last, compile)
        why = ("set by the flags" if flags else "the default" if not tune else
               "the default on this device" if dev.type != "cpu" else "the default (not tuned in a distributed job)")
        return Choice(rt, why)
    return tune_runtime(cfg, mode, batch_size, dev, log=log)


def select_train_runtime(tc) -> Choice:
    """``select_runtime`` for a ``TrainConfig``: its model, and its batch size (or its recipe's)."""
    cfg = model_config(tc.model, num_classes=tc.num_classes, shortcut=tc.shortcut, variant=tc.variant)
    recipe_batch = resolve_recipe(tc.recipe, cfg.family, cfg.depth).batch_size
    batch_size = tc.batch_size or recipe_batch
    # Tuning costs a few dozen steps: a short run would not earn them back. Nor is it tuned far above the recipe's
    # batch, where a few models side by side could run out of memory before the trainer has checked the batch.
    short = (tc.iterations is not None and tc.iterations < MIN_TUNED_ITERATIONS) or (tc.epochs is not None
                                                                                     and tc.epochs < 1)
    tune = not short and batch_size <= 4 * recipe_batch
    choice = select_runtime(cfg, "train", batch_size, device=tc.device, runtime=tc.runtime, precision=tc.precision,
                            channels_last=tc.channels_last, compile=tc.compile, tune=tune)
    if choice.reason == "the default":
        choice.reason += " (not tuned: " + ("a short run)" if short else f"batch {batch_size} far above the recipe's)")
    return choice

__all__ = ["Choice", "RUNTIMES", "autotune", "candidates", "select_runtime", "select_train_runtime", "tune_runtime"]
