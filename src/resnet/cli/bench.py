"""``resnet bench train|eval|data``: images/s against a plain-PyTorch reference measured in the same run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UsageError
from .args import nonnegative_int, positive_int
from .train import add_runtime_options


def register(sub) -> None:
    p = sub.add_parser("bench", help="images/s of training, inference or data loading, against a reference")
    modes = p.add_subparsers(dest="mode", metavar="train|eval|data")
    modes.required = True
    for mode, what in (("train", "the default training step (forward, backward, SGD step)"),
                       ("eval", "inference (forward only, eval mode)")):
        m = modes.add_parser(mode, help=f"{what}, ours vs plain eager fp32 PyTorch")
        m.add_argument("--model", default="resnet20", help="model name (default resnet20)")
        m.add_argument("--variant", metavar="v1|v1.5", help="bottleneck stride placement (default: the paper's v1)")
        m.add_argument("--batch-size", type=positive_int, help="default 128 on CIFAR nets, 32 on ImageNet nets")
        m.add_argument("--steps", type=positive_int, default=20, help="measured steps of each side (default 20)")
        m.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed steps first; the first compiles (default 3)")
        m.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds the steps are split into")
        m.add_argument("--no-memory", dest="memory", action="store_false",
                       help="skip the peak-memory probes (each side run again in a fresh process)")
        m.add_argument("--matmul-size", type=positive_int, metavar="N", help="square matmul size (default 2048 CPU, 8192 CUDA)")
        m.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads (default: one per core)")
        m.add_argument("--json", action="store_true", help="print one JSON object with every figure")
        m.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
        add_runtime_options(m)
        m.set_defaults(func=run)
    d = modes.add_parser("data", help="images/s of the image-folder training pipeline, ours vs torchvision's")
    d.add_argument("--data-dir", required=True, help="an image folder (DIR/train/<class>/*) or ImageNet root")
    d.add_argument("--split", default="train", help="sub-folder to read (default train)")
    d.add_argument("--workers", type=nonnegative_int, default=2, help="loader processes of each pipeline (default 2)")
    d.add_argument("--batches", type=positive_int, default=20, help="batches to time (default 20)")
    d.add_argument("--batch-size", type=positive_int, default=64)
    d.add_argument("--repeats", type=positive_int, default=2, help="alternating timings of each pipeline; the best is kept")
    d.add_argument("--device", default="cpu", help="where the batches end (default cpu)")
    d.add_argument("--no-cpu-time", dest="cpu_time", action="store_false",
                   help="skip the one-process CPU-time measurement")
    d.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    d.set_defaults(func=run_data)


def run(args) -> int:
    from ..bench import BenchConfig, format_bench, run_bench

    bc = BenchConfig(mode=args.mode, model=args.model, variant=args.variant, batch_size=args.batch_size,
                     device=args.device, runtime=args.runtime, precision=args.precision, channels_last=args.channels_last,
                     compile=args.compile, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                     memory=args.memory, matmul_size=args.matmul_size, threads=args.threads)
    log = None if args.quiet else (lambda s: print(f"resnet bench: {s}", file=sys.stderr, flush=True))
    result = run_bench(bc, log)
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


def run_data(args) -> int:
    from ..bench.loader import bench_data, format_bench_data

    if not (Path(args.data_dir) / args.split).is_dir():
        raise UsageError(f"{args.data_dir}/{args.split} is not a folder: give --data-dir DIR with DIR/{args.split}/"
                         "<class>/<images>")
    result = bench_data(args.data_dir, args.workers, args.batches, args.batch_size, split=args.split,
                        repeats=args.repeats, device=args.device, cpu_time=args.cpu_time)
    print(json.dumps(result) if args.json else format_bench_data(result))
    return 0
