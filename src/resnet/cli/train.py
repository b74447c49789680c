"""``resnet train``: train a network with a recipe (see ``resnet.training``)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.sources import NAMES
from .args import dataset, nonnegative_int, positive_float, positive_int
from .models import add_model_options


def add_runtime_options(p, tuned: bool = True) -> None:
    """The runtime flags every command that runs a model offers. ``tuned``: whether ``--runtime auto`` times the
    candidates (training) or takes the fixed default (one pass over the data would not repay the timing)."""
    auto = ("auto (default): on CPU, time a few steps of each candidate (bf16 only where native; NCHW and "
            "channels_last) and keep the fastest, cached per machine, model and batch" if tuned else
            "auto (default): bf16 where the hardware runs it natively, else fp32, channels_last, not compiled")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--runtime", default="auto", metavar="auto|fp32|fp32-cl|bf16|bf16-nchw[+compile]",
                   help=f"{auto}; or name one. --precision, --channels-last and --compile override its parts")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="bf16 autocast where the hardware runs it natively (default), or fp32")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-compile", dest="compile", action="store_false")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a network (CIFAR, an image folder, ImageNet)")
    p.add_argument("--model", default="resnet20", help="model name (see `resnet models`); default resnet20")
    add_model_options(p, required=False)
    p.add_argument("--data", default="embedded", type=dataset, metavar="|".join(NAMES),
                   help="dataset (default: the CIFAR-10 subset shipped in the package)")
    p.add_argument("--data-dir", help="where the dataset is (or will be downloaded)")
    p.add_argument("--protocol", default="val", choices=("val", "test"),
                   help="val: train 45k / evaluate on the held-out 5k (the paper's, default); test: 50k / test set")
    p.add_argument("--recipe", default="paper", help="paper (Sec. 4.2 CIFAR, Sec. 3.4 ImageNet), fast (CIFAR), step")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_float, help="training length in epochs (milestones scale with it)")
    budget.add_argument("--iterations", type=positive_int, help="training length in iterations (paper: 64000 on CIFAR)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (default: the recipe's, 128 CIFAR / 256 ImageNet)")
    p.add_argument("--lr", type=positive_float, help="base learning rate (default: the recipe's, 0.1)")
    p.add_argument("--warmup", type=nonnegative_int, metavar="N",
                   help="linear learning-rate warm-up over the first N iterations (beyond the paper; deep CIFAR ResNets "
                        "at lr 0.1 can blow up in their first steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="RUN_DIR",
                   help="run directory (default: a new one, runs/run, runs/run-2, ...; with --resume, the latest)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, or start it if it has none (safe to rerun)")
    p.add_argument("--allow-changes", metavar="SETTINGS", type=lambda s: tuple(x for x in s.split(",") if x.strip()),
                   default=(), help="with --resume: settings the resumed run may change, e.g. lr,iterations "
                                    "(recorded in config.json's history)")
    p.add_argument("--eval-every", type=positive_int, metavar="N",
                   help="iterations between evaluations and checkpoints (default: at most 10 per run, an epoch apart; "
                        "--recipe fast: 4 over the run)")
    p.add_argument("--checkpoint-minutes", type=positive_float, default=10.0, metavar="M",
                   help="also save a checkpoint every M minutes of training between evaluations (default 10): a run "
                        "killed without warning loses at most that much")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (under torchrun)")
    p.add_argument("--workers", type=nonnegative_int,
                   help="data loader processes for image folders (default: one per core, at most 4; 0: none)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms only (slower on GPU)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads (default: one per core)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (one line per evaluation is still printed)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write each evaluation's scalars (metrics.jsonl's) as TensorBoard event files in the run "
                        "directory; needs pip install 'resnet-reference[tensorboard]'")
    add_runtime_options(p)
    p.add_argument("--cuda-graphs", action="store_true",
                   help="with --compile on CUDA: CUDA graphs (inductor's reduce-overhead mode), one launch per pass")
    p.set_defaults(func=run)


def default_run_dir(root: Path, resume: bool) -> Path:
    """Where a run goes when no --out is given: ``runs/run`` for the first, then ``runs/run-2``, ``runs/run-3``...,
    so that a second ``resnet train`` starts a run of its own; ``--resume`` continues the latest of them."""
    def numbered(i: int) -> Path:
        return root / ("run" if i == 1 else f"run-{i}")

    i = 1
    while numbered(i).exists() and any(numbered(i).iterdir()):
        i += 1
    return numbered(max(1, i - 1)) if resume else numbered(i)


def run(args) -> int:
    from ..training.config import TrainConfig
    from ..training.trainer import train

    if args.tensorboard:  # without the package: one line before any work
        from ..training.tensorboard import require
        require()
    if args.allow_changes and not args.resume:
        from ..errors import UsageError
        raise UsageError("--allow-changes goes with --resume (it names the settings a resumed run may change)")
    from ..data.workers import default_workers

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    fields = TrainConfig.__dataclass_fields__
    out = args.out or default_run_dir(Path("runs"), resume=args.resume)
    if not args.out:
        logging.getLogger("resnet.train").info(f"run directory: {out}")
    options = dict(vars(args), out=str(out), workers=default_workers() if args.workers is None else args.workers)
    cfg = TrainConfig(**{k: v for k, v in options.items() if k in fields})
    result = train(cfg)
    if result.stopped_by is not None:  # stopped by a signal, its checkpoint saved: the shell's 128 + signal
        return 128 + result.stopped_by
    if result.rank == 0:
        final = result.final
        print(f"done: {final.model} {final.step} iterations, {final.eval_split} error "
              f"{final.val_error:.2f}% (best {final.best_val_error:.2f}%)"
              + (f", with --tta {final.tta} {final.val_error_tta:.2f}%" if final.tta else "")
              + f", {final.seconds:.0f} s, run in {cfg.out}")
    return 0
