"""``resnet campaign``: train the campaign's long CIFAR-10 runs in order, across sessions; ``resnet runs``: what is
done, running and left (``resnet.experiments.campaign``)."""

from __future__ import annotations

import json

from ..data.sources import names
from .args import dataset, positive_int


def _common(p) -> None:
    from ..experiments.campaign import DEFAULT_RUNS

    p.add_argument("--runs", default=str(DEFAULT_RUNS), metavar="DIR",
                   help=f"the campaign's run directories (default {DEFAULT_RUNS}, git-ignored, inside the checkout)")
    p.add_argument("--data", default="cifar10", type=dataset, metavar="|".join(names(cifar10_images=True)),
                   help="CIFAR-10's images (default cifar10)")
    p.add_argument("--data-dir", help="where CIFAR-10 is (any form `resnet train --data cifar10` reads)")


def register(sub) -> None:

    p = sub.add_parser("campaign", help="train the campaign's long runs in order; resumes where it stopped",
                       description="Trains the plan's runs one after another (resnet.experiments.campaign.PLAN), "
                                   "resuming the first unfinished one exactly. SIGTERM or Ctrl-C saves a checkpoint "
                                   "and stops (exit 143 / 130); the same command continues. `resnet runs` shows "
                                   "the state.")
    _common(p)
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="torch threads (default 1: the campaign keeps one core, the other stays free)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--progress", action="store_true", help="a progress bar while training")
    p.add_argument("--ship", action="store_true",
                   help="train nothing: copy the last weights of the finished runs the plan ships into the package "
                        "(src/resnet/weights/pretrained/NAME), with recipe, budget, seed and errors in the metadata")
    p.set_defaults(func=run_campaign)

    p = sub.add_parser("runs", help="the campaign's runs: done, running, left, and the time each still needs")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=show_runs)


def _options(args, **kw):
    from ..experiments.runs import Options

    return Options(name="campaign", data=args.data, data_dir=args.data_dir, runs=args.runs, **kw)


def run_campaign(args) -> int:
    from ..experiments.campaign import run_campaign, ship_finished
    from ..experiments.runs import set_threads

    set_threads(args.threads)
    opts = _options(args, device=args.device, precision=args.precision, progress=args.progress,
                    threads=args.threads)
    if args.ship:
        ship_finished(opts)
        return 0
    result = run_campaign(opts, log=lambda m: print(m, flush=True))
    return 0 if result.stopped is None else 128 + result.stopped.signum  # the shell's status for a signal


def show_runs(args) -> int:
    from ..experiments.campaign import campaign_status, format_status

    status = campaign_status(_options(args))
    print(json.dumps(status) if args.json else format_status(status))
    return 0
