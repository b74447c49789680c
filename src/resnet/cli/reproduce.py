"""``resnet reproduce NAME``: one of the paper's experiments (see ``resnet.experiments`` and docs/reproduce.md)."""

from __future__ import annotations

from ..data.sources import NAMES, names
from .args import dataset, positive_int


def _depths(text: str) -> tuple[int, ...]:
    import argparse

    try:
        depths = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        depths = ()
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"expected depths like 20,32,44,56, got {text!r}")
    return depths


def register(sub) -> None:
    from ..experiments import EXPERIMENTS
    from ..runs.budgets import BUDGETS

    p = sub.add_parser("reproduce", help="run one of the paper's experiments and write its report",
                       description="Experiments: " + "; ".join(f"{k}: {e.about}" for k, e in EXPERIMENTS.items()))
    p.add_argument("name", metavar="NAME", choices=list(EXPERIMENTS), help=", ".join(EXPERIMENTS))
    p.add_argument("--budget", default="short", choices=list(BUDGETS),
                   help="smoke (seconds, tiny data), short (1000 iterations, a CPU hour), medium (4000), "
                        "paper (64k iterations, Sec. 4.2)")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="K", help="training runs per configuration (default 1)")
    p.add_argument("--data", default="cifar10", type=dataset, metavar="|".join(NAMES),
                   help=f"CIFAR-10 experiments: {' | '.join(names(cifar10_images=True))}; ImageNet experiments: "
                        f"{' | '.join(names('folder'))}")
    p.add_argument("--data-dir", help="where the dataset is")
    p.add_argument("--out", metavar="DIR", help="output folder (default results/NAME)")
    p.add_argument("--runs", metavar="DIR", help="shared training runs (default: runs/ next to --out)")
    p.add_argument("--depths", type=_depths, metavar="D,D,...", help="override the experiment's depths")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--compile", action="store_true", help="torch.compile the training runs (pays off on long runs)")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N", help="train up to N runs at once, one process each")
    p.add_argument("--threads", type=positive_int, metavar="N", help="torch threads per process (default: torch's choice)")
    p.add_argument("--launch", action="store_true", help="ImageNet experiments: run the command lines")
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    p.add_argument("--records", metavar="DIR",
                   help="CIFAR experiments: report on the finished runs recorded in DIR (e.g. results/records, "
                        "written by `resnet campaign`), every seed found there; nothing is trained")
    p.add_argument("--from-metrics", metavar="FILE",
                   help="write the report again from this metrics.json (and the config.json beside it): the "
                        "original numbers, the current verdicts; nothing is trained or measured")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..experiments import rerender_experiment, run_experiment
    from ..runs.spec import Options
    from ..runs.store import set_threads

    if args.from_metrics:
        print(rerender_experiment(args.name, args.from_metrics).read_text())
        return 0
    set_threads(args.threads)
    report = run_experiment(Options(name=args.name, budget=args.budget, seeds=args.seeds, data=args.data,
                           data_dir=args.data_dir, out=args.out, runs=args.runs, device=args.device,
                           precision=args.precision, depths=args.depths, launch=args.launch,
                           progress=args.progress, compile=args.compile, jobs=args.jobs, threads=args.threads,
                           records=args.records))
    print(report.read_text())
    return 0
