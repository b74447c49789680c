"""Runtime candidates side by side (``python -m resnet.bench.candidates resnet20 train``): the measurement behind
the fp32 defaults of AVX2 CPUs and of the fused BN + ReLU kernel (docs/speed.md). ``--bf16`` runs
every candidate but the reference (eager fp32 NCHW) under bf16 autocast, where bf16 is native.

Every candidate is built in this one process and timed in alternating rounds (one step each per round, the order
reversed every other round), each figure the median over rounds, as ratios to eager fp32 NCHW measured in the same
rounds. To mimic an AVX2 CPU without native bf16 on a bigger one, run with ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from ..models import build_model, fused, model_config
from ..models.fold import fold_batchnorm
from ..models.resnet import ModelConfig
from ..runtime import cpu_capability, native_bf16
from ..training import step as training_step
from ..training.recipes import resolve_recipe


def _step(cfg, mode: str, batch: int, bf16: bool, channels_last: bool, bn_fold: bool, compile: str | None,
          fuse: bool = True):
    torch.manual_seed(0)
    net = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=g)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    if mode == "eval":
        net = fold_batchnorm(net) if bn_fold else net.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if compile:
        options = {"freezing": True} if compile == "frozen" else None
        fwd = torch.compile(net, options=options, mode="max-autotune" if compile == "max-autotune" else None)
    else:
        fwd = net
    def precision():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    if mode == "eval":
        def step():
            with torch.no_grad(), precision():
                fwd(x)
        return step
    opt = training_step.build_sgd(net.parameters(), resolve_recipe("paper", cfg.family, cfg.depth))

    def step():  # the trainer's own step: what is timed is what is run
        with contextlib.nullcontext() if fuse else fused.off():
            training_step.train_step(fwd, opt, x, y, autocast=precision)
    return step


def alternating_rounds(steps: dict, rounds: int, after_round=None) -> dict:
    """Seconds of each step per round, the steps run in alternating order (reversed every other round) so that a
    drift of the machine hits all alike; ``after_round()`` runs after each round (a yardstick sample)."""
    times = {n: [] for n in steps}
    names = list(steps)
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t)
        if after_round is not None:
            after_round()
    return times


def specs(mode: str, compile: bool) -> list[tuple]:
    """The candidates of ``mode``: (name, channels_last, BN folded, compile mode or None[, BN+ReLU fused])."""
    found = [("eager NCHW", False, False, None), ("eager channels_last", True, False, None)]
    if mode == "train":  # channels_last trains with the fused BN + ReLU kernel; without it, for comparison
        found += [("eager channels_last, BN+ReLU unfused", True, False, None, False)]
    if mode == "eval":
        found += [("BN folded NCHW", False, True, None), ("BN folded channels_last", True, True, None)]
    if compile and mode == "eval":
        found += [("compiled channels_last", True, False, "default"),
                  ("compiled frozen channels_last", True, False, "frozen"),
                  ("compiled frozen NCHW", False, False, "frozen")]
    elif compile:
        found += [("compiled NCHW", False, False, "default"), ("compiled channels_last", True, False, "default")]
    return found


def compare_candidates(cfg: ModelConfig, mode: str, batch: int, *, rounds: int = 5, compile: bool = False,
                       bf16: bool = False, log=None) -> dict:
    """Every candidate of ``mode`` built, warmed up (two steps) and timed in alternating rounds: for each, the seconds
    of its steps by round, or why it failed. The first candidate (eager fp32 NCHW) is the reference."""
    log = log or (lambda s: None)
    steps, failed = {}, {}
    for name, *spec in specs(mode, compile):
        t = time.perf_counter()
        try:
            steps[name] = _step(cfg, mode, batch, bf16 and name != "eager NCHW", *spec)
            for _ in range(2):
                steps[name]()
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run here is reported, not fatal
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
            log(f"{name}: failed ({failed[name]})")
            steps.pop(name, None)
            continue
        log(f"{name}: build + 2 warm-up steps {time.perf_counter() - t:.1f} s")
    return {"times": alternating_rounds(steps, rounds), "failed": failed}


def format_candidates(result: dict, batch: int) -> str:
    """One line per candidate: the median step, images/s and the ratio to eager fp32 NCHW (the first)."""
    times = result["times"]
    names = list(times)
    ref = statistics.median(times[names[0]])
    lines = []
    for n in names:
        m = statistics.median(times[n])
        lines.append(f"{n:38s} {1e3 * m:8.1f} ms/step  {batch / m:7.1f} img/s  {ref / m:5.2f}x eager NCHW  "
                     f"(rounds: {', '.join(f'{1e3 * t:.0f}' for t in times[n])})")
    return "\n".join(lines)


def main() -> None:
    """The script: one table of the candidates of a model and mode (``python -m resnet.bench.candidates``)."""
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("mode", choices=("train", "eval"))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="add the torch.compile candidates")
    p.add_argument("--bf16", action="store_true", help="every candidate but the reference under bf16 autocast "
                   "(only where bf16 is native)")
    a = p.parse_args()
    if a.bf16 and not native_bf16(torch.device("cpu")):
        p.error("--bf16: this CPU has no native bf16; an emulated bf16 would be timed")
    torch.set_num_threads(a.threads)
    cfg = model_config(a.model)
    batch = a.batch_size or (128 if cfg.family == "cifar" else 32)
    print(f"{a.model} {a.mode}, batch {batch}, {'bf16 autocast (the reference fp32)' if a.bf16 else 'fp32'}, "
          f"{a.threads} thread(s), {cpu_capability()}, torch {torch.__version__}", flush=True)
    result = compare_candidates(cfg, a.mode, batch, rounds=a.rounds, compile=a.compile, bf16=a.bf16,
                                log=lambda line: print(line, flush=True))
    print(format_candidates(result, batch), flush=True)


if __name__ == "__main__":
    main()
