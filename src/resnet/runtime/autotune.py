"""``--runtime auto``: time a few steps of each candidate runtime on this machine, keep the fastest, remember it.

Which runtime is fastest depends on the processor (native bf16 or not), the network and the batch: on an AVX2 CPU
without bf16, fp32 channels_last and fp32 NCHW are close, and which one wins changes with the layer shapes
(docs/speed.md). So the choice is measured, not guessed: every candidate (bf16 only where the hardware runs it
natively; NCHW and channels_last) runs one warm-up step and then steps in alternating rounds, on a synthetic batch of
the real size; the fastest step wins. A candidate that raises or gives a non-finite loss is skipped. The choice is
cached (``cache.py``) per CPU capability, torch version, model, batch size, mode and thread count, so later runs start
at once. Candidates differ only in precision and memory layout, so the choice changes no result beyond what bf16
autocast already may.

What is timed is given by the caller (a :class:`Workload`): the trainer gives its own training step
(``training.runtime_choice``), so that what is measured is what is run; inference is :func:`inference_step`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Callable

import torch

from ..models import build_model, fused
from ..models.resnet import ModelConfig
from . import cache as choices
from .hardware import cpu_capability, native_bf16
from .settings import Choice, Runtime, default_compile, named_runtime, resolve_runtime, runtime_name

# Timings are trusted only if the timing process got at least this share of the CPU time its threads could use (wall
# time x threads). On an oversubscribed machine OpenMP threads wait for descheduled siblings and a step can take 40x
# its time, in whichever candidate happens to be unlucky: seen here, a loaded 2-core AVX-512 BF16 CPU "measured"
# fp32 at 8.1 s per ResNet-20 step and bf16 at 36 s, where an idle one measures 0.43 s and 0.23 s.
MIN_CPU_SHARE = 0.75

MakeStep = Callable[[Runtime], Callable[[], object]]


@dataclass(frozen=True)
class Workload:
    """What the candidates are timed on: ``make_step(rt)`` builds one step (returning its loss or output) of ``cfg``'s
    network in ``mode`` ("train" or "eval") at ``batch_size`` under the runtime ``rt``. The three name the choice in
    the cache."""

    cfg: ModelConfig
    mode: str
    batch_size: int
    make_step: MakeStep


class Outcome(enum.Enum):
    """What became of a candidate: timed to the end; dropped (too slow to win: its timings stand, but it is no longer
    timed); or failed (it raised or gave a non-finite value: it is never chosen)."""

    TIMED = "timed"
    DROPPED = "dropped"
    FAILED = "failed"


@dataclass
class Candidate:
    """One runtime under test: its step, the seconds of its warm-up step and of each timed step, and its outcome."""

    runtime: Runtime
    step: Callable[[], object] | None = None
    warm_up_s: float | None = None
    samples: list[float] = field(default_factory=list)
    outcome: Outcome = Outcome.TIMED
    why: str = ""  # why it was dropped or failed

    @property
    def name(self) -> str:
        return runtime_name(self.runtime)

    @property
    def live(self) -> bool:
        return self.outcome is Outcome.TIMED

    def fail(self, error: Exception) -> None:
        text = str(error).strip()
        self.outcome = Outcome.FAILED
        self.why = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]

    def drop(self, when: str, ratio: float) -> None:
        self.outcome = Outcome.DROPPED
        self.why = f"dropped after {when} ({ratio:.2f}x the fastest)"

    def run(self) -> float | None:
        """One step, timed: its seconds, or None if it failed (and the candidate with it)."""
        t = time.perf_counter()
        try:
            _check(self.step())
        except Exception as e:  # noqa: BLE001 - any failure rules the candidate out
            self.fail(e)
            return None
        return time.perf_counter() - t

    @property
    def timing_ms(self) -> float | None:
        """Its fastest step in ms (on a shared machine the neighbours only ever add time); its warm-up step's if it
        was dropped before the rounds; None if it failed before any."""
        seconds = min(self.samples) if self.samples else self.warm_up_s
        return None if seconds is None else round(1e3 * seconds, 1)


def candidates(device: torch.device) -> list[Runtime]:
    """The runtimes worth timing on ``device``: bf16 only where it is native (an emulated bf16 step is many times
    slower and is never chosen), each in both layouts; compiled only where compiling is the default (its compile
    time is minutes on CPU, so it is not tuned there; docs/speed.md)."""
    compile = default_compile(device)
    names = (["bf16", "bf16-nchw"] if native_bf16(device) else []) + ["fp32-cl", "fp32"]
    return [named_runtime(n, device, compile) for n in names]


def autotune(cands: list[Runtime], make_step: MakeStep, *, rounds: int = 5, min_rounds: int = 2,
             drop_ratio: float = 2.0, budget_s: float = 20.0, log: Callable[[str], None] | None = None) -> Choice:
    """The fastest of ``cands``: ``make_step(rt)`` builds one step (returning its loss or output); each candidate runs
    one warm-up step, then one step per round in alternating order, and is judged by its fastest step (on a shared
    machine the neighbours only ever add time). A candidate over ``drop_ratio`` times the fastest, after its warm-up
    step (by ``1.5 * drop_ratio``) or after the first round, is dropped: it cannot win. Rounds stop after
    ``min_rounds`` once ``budget_s`` seconds of rounds are spent. A candidate that raises, or whose step returns a
    non-finite value, is skipped. Raises RuntimeError if every candidate fails."""
    tried = [Candidate(rt) for rt in cands]
    _warm_up(tried, make_step, log or (lambda s: None))
    warmed = [c for c in tried if c.warm_up_s is not None]
    _drop_slower(warmed, [c.warm_up_s for c in warmed], 1.5 * drop_ratio, "its warm-up step")
    cpu_share = _time_rounds(tried, rounds, min_rounds, drop_ratio, budget_s)
    return _choose(tried, cpu_share)


def _warm_up(tried: list[Candidate], make_step: MakeStep, log: Callable[[str], None]) -> None:
    """Build each candidate's step and run it once: one-off costs (oneDNN primitives, first touch of buffers)."""
    for c in tried:
        try:
            c.step = make_step(c.runtime)
            t = time.perf_counter()
            _check(c.step())
        except Exception as e:  # noqa: BLE001 - any failure rules the candidate out
            c.fail(e)
            log(f"runtime {c.name} failed ({c.why}); skipped")
            continue
        c.warm_up_s = time.perf_counter() - t
    if all(c.outcome is Outcome.FAILED for c in tried):
        raise RuntimeError(_all_failed(tried))


def _drop_slower(cands: list[Candidate], seconds: list[float], ratio: float, when: str) -> None:
    """Drop each candidate whose ``seconds`` are over ``ratio`` times the fastest's: it cannot win."""
    fastest = min(seconds, default=None)
    for c, s in zip(cands, seconds):
        if fastest is not None and s > ratio * fastest:
            c.drop(when, s / fastest)


def _time_rounds(tried: list[Candidate], rounds: int, min_rounds: int, drop_ratio: float, budget_s: float) -> float:
    """One step of each live candidate per round, in alternating order, so that a drift of the machine hits all
    alike. Returns the CPU share the process got while the rounds ran (see ``MIN_CPU_SHARE``)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for r in range(rounds):
        live = [c for c in tried if c.live]
        for c in (live if r % 2 == 0 else live[::-1]):
            seconds = c.run()
            if seconds is not None:
                c.samples.append(seconds)
        if r == 0 and len(live) > 1:
            timed = [c for c in live if c.live]
            _drop_slower(timed, [c.samples[0] for c in timed], drop_ratio, "one round")
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return (time.process_time() - cpu_start) / max(1e-9, (time.perf_counter() - start) * torch.get_num_threads())


def _choose(tried: list[Candidate], cpu_share: float) -> Choice:
    """The fastest candidate that did not fail, and the line that says why."""
    # a candidate that failed at its warm-up step first, then the others in their order
    timings = {c.name: c.timing_ms for c in sorted(tried, key=lambda c: c.warm_up_s is not None)}
    valid = [c for c in tried if c.samples and c.outcome is not Outcome.FAILED]
    if not valid:
        raise RuntimeError(_all_failed(tried))
    best = min(valid, key=lambda c: min(c.samples))
    others = sorted((t, n) for n, t in timings.items() if n != best.name and t is not None)
    why = f"the fastest of {len(tried)} timed here ({best.name} {timings[best.name]:.0f} ms/step"
    why += "".join(f", {n} {t:.0f}" for t, n in others)
    why += "".join(f", {c.name} failed" for c in tried if c.outcome is Outcome.FAILED) + "; fastest step)"
    return Choice(best.runtime, why, timings, cpu_share=round(cpu_share, 2))


def _all_failed(tried: list[Candidate]) -> str:
    return "every candidate runtime failed: " + "; ".join(f"{c.name}: {c.why}" for c in tried if c.why)


def _check(value) -> None:
    if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.detach().float()).all()):
        raise FloatingPointError("non-finite result")


def synthetic_problem(cfg: ModelConfig, batch_size: int, rt: Runtime) -> tuple[torch.nn.Module, torch.Tensor,
                                                                                torch.Tensor]:
    """What a candidate is timed on: a fresh ``cfg`` network (seed 0; the caller's random state is left as it was)
    and one random batch of ``batch_size`` images and labels on ``rt``'s device, in its layout."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, cfg.input_size, cfg.input_size, generator=g).to(rt.device)
    y = torch.randint(0, cfg.num_classes, (batch_size,), generator=g).to(rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_model(cfg)
    return net, x, y


def inference_step(cfg: ModelConfig, batch_size: int) -> MakeStep:
    """``make_step`` of inference as ``resnet bench eval`` runs it (``Runtime.prepare_inference``: BN folded)."""

    def make_step(rt: Runtime) -> Callable[[], object]:
        net, x, _ = synthetic_problem(cfg, batch_size, rt)
        with torch.no_grad():
            model = rt.prepare_inference(net)

        def infer():
            with torch.no_grad(), rt.autocast():
                return model(x)[0, 0]
        return infer

    return make_step


def tune_runtime(work: Workload, device: torch.device, *, cache: bool = True,
                 log: Callable[[str], None] | None = None) -> Choice:
    """The fastest candidate runtime for ``work`` on ``device``: from the cache if it was measured before under the
    same key, else measured now (``autotune``) and cached, unless the machine was too busy to trust the timings."""
    cands = candidates(device)
    if len(cands) == 1:
        return Choice(cands[0], f"the only candidate on {cpu_capability(device)}")
    key = choices.cache_key(device, work.cfg, work.mode, work.batch_size)
    names = [runtime_name(rt) for rt in cands]
    entry = choices.read_choices().get(key) if cache else None
    if entry and entry.get("runtime") in names:
        rt = cands[names.index(entry["runtime"])]
        return Choice(rt, f"measured on {entry.get('date', '?')}: {entry.get('reason', '')} [cached in "
                          f"{choices.cache_path()}]", entry.get("timings_ms", {}), cached=True)
    if work.mode == "train" and device.type == "cpu":
        fused.extension()  # the kernel's first build (about a minute) is not a candidate's time
    with torch.random.fork_rng(devices=[]):
        choice = autotune(cands, work.make_step, log=log)
    if choice.cpu_share is not None and choice.cpu_share < MIN_CPU_SHARE:
        # A busy machine: the timings say more about the neighbours than about the runtimes. Not cached.
        return Choice(resolve_runtime(str(device)), f"the default: the machine is busy (this process got "
                      f"{100 * choice.cpu_share:.0f}% of the CPU time of its {torch.get_num_threads()} threads while "
                      "timing the candidates), so their timings were not trusted nor cached", choice.timings_ms,
                      cpu_share=choice.cpu_share)
    choice.reason = f"{cpu_capability(device)}{'' if native_bf16(device) else ', no native bf16'}: {choice.reason}"
    if cache:
        choices.remember(key, {"runtime": choice.name, "reason": choice.reason, "timings_ms": choice.timings_ms,
                               "date": date.today().isoformat()})
    return choice
