"""``resnet campaign``: train the campaign's long CIFAR-10 runs in order, across sessions; ``resnet runs``: what is
done, running and left (``resnet.campaign``); ``resnet gpu-campaign``: Table 6 at the paper's budget on
one GPU within a job's time limit, several runs at once, stopped with a checkpoint before the deadline (``resnet.campaign.gpu``,
``tools/gpu-campaign.sh``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.sources import names
from .args import dataset, positive_float, positive_int


def _common(p) -> None:
    from ..campaign.plan import DEFAULT_RECORDS, DEFAULT_RUNS

    p.add_argument("--runs", default=str(DEFAULT_RUNS), metavar="DIR",
                   help=f"the campaign's run directories (default {DEFAULT_RUNS}, git-ignored, inside the checkout)")
    p.add_argument("--data", default="cifar10", type=dataset, metavar="|".join(names(cifar10_images=True)),
                   help="CIFAR-10's images (default cifar10)")
    p.add_argument("--data-dir", help="where CIFAR-10 is (any form `resnet train --data cifar10` reads)")
    p.add_argument("--records", default=str(DEFAULT_RECORDS), metavar="DIR",
                   help=f"each finished run's config.json and metrics.jsonl (default {DEFAULT_RECORDS}, checked in): "
                        "a run recorded there is finished, on any machine")


def register(sub) -> None:

    p = sub.add_parser("campaign", help="train the campaign's long runs in order; resumes where it stopped",
                       description="Trains the plan's runs one after another (resnet.campaign.plan.PLAN), "
                                   "resuming the first unfinished one exactly. SIGTERM or Ctrl-C saves a checkpoint "
                                   "and stops (exit 143 / 130); the same command continues. `resnet runs` shows "
                                   "the state.")
    _common(p)
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="torch threads (default 1: one process per core, several processes share the plan)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--progress", action="store_true", help="a progress bar while training")
    p.add_argument("--checkpoint-minutes", type=positive_float, default=10.0, metavar="M",
                   help="a checkpoint every M minutes of training besides each evaluation's (default 10)")
    p.add_argument("--ship", metavar="DIR",
                   help="train nothing: copy the last weights of the finished runs the plan ships into DIR "
                        "(DIR/NAME.safetensors and NAME.json), with recipe, budget, seed and errors in the metadata; "
                        "to ship them with the package, name its folder src/resnet/weights/pretrained")
    p.add_argument("--analyse", action="store_true",
                   help="train nothing: measure the layer responses (Fig. 7) and lesion errors of every recorded run "
                        "whose record lacks them (RECORDS/RUN/analysis.json), from its last weights: its run folder, "
                        "or the shipped weights made from it")
    p.set_defaults(func=run_campaign)

    _register_gpu(sub)

    p = sub.add_parser("runs", help="the campaign's runs: done, running, left, and the time each still needs")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=show_runs)


def _options(args, **kw):
    from ..runs.spec import Options

    return Options(name="campaign", data=args.data, data_dir=args.data_dir, runs=args.runs, **kw)


def run_campaign(args) -> int:
    from ..campaign.train import run_campaign, ship_finished
    from ..runs.store import set_threads

    set_threads(args.threads)
    opts = _options(args, device=args.device, precision=args.precision, progress=args.progress,
                    threads=args.threads, checkpoint_minutes=args.checkpoint_minutes)
    if args.ship:
        ship_finished(opts, Path(args.ship))
        return 0
    if args.analyse:
        from ..campaign.analyses import analyse_finished

        analyse_finished(opts, Path(args.records))
        return 0
    result = run_campaign(opts, records=Path(args.records))
    return 0 if result.stopped is None else 128 + result.stopped.signum  # the shell's status for a signal


def show_runs(args) -> int:
    from ..campaign.status import campaign_status, format_status

    status = campaign_status(_options(args), records=Path(args.records))
    print(json.dumps(status.to_json()) if args.json else format_status(status))
    return 0


def _register_gpu(sub) -> None:

    p = sub.add_parser("gpu-campaign", help="Table 6 at the paper's budget on one GPU within a job's time limit; resumes",
                       description="Trains Table 6's nets (ResNet-20/32/44/56/110, plain-20/32/44/56) as concurrent "
                                   "`resnet train` processes on one GPU, stops them with a checkpoint before the "
                                   "deadline (a batch job's time limit, a spot instance's), and writes summary.json, "
                                   "summary.md, log.txt and the runs as runs-N.tar into --out. The same command, in "
                                   "the next job, resumes. Exit 0: all finished; 4: some "
                                   "stopped or not started by the deadline; 1: a run failed; 2: bad input.")
    p.add_argument("--part", default="1", choices=("1", "2", "all"),
                   help="1 (default): ResNet-20/56/110 and plain-20/56, the most valuable; 2: ResNet-32/44 and "
                        "plain-32/44, after part 1's unfinished runs; all: the nine")
    p.add_argument("--models", type=lambda s: tuple(m.strip() for m in s.split(",") if m.strip()),
                   metavar="M1,M2", help="these CIFAR nets instead of the part's")
    p.add_argument("--budget", default="paper", help="paper (default: 64k iterations, Sec. 4.2), smoke (tests), ...")
    p.add_argument("--iterations", type=positive_int, metavar="N", help="instead of the budget's (a shorter try)")
    p.add_argument("--data", default="cifar10", type=dataset, metavar="|".join(names(cifar10_images=True)),
                   help="CIFAR-10's images (default cifar10)")
    p.add_argument("--data-dir", default="data",
                   help="where CIFAR-10 is (default data/, git-ignored: copy cifar10-train-jpeg.tar.gz there)")
    p.add_argument("--runs", default="runs/gpu-campaign", metavar="DIR",
                   help="the run folders (default runs/gpu-campaign, git-ignored); a second call resumes them")
    p.add_argument("--out", metavar="DIR", required=True, help="where the summary, the log and the packed runs go")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (the tests)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile each run (default: on CUDA with Triton)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_true", default=None,
                   help="CUDA graphs in each compiled run (default: on where compiling on CUDA; a run that fails "
                        "with them resumes without)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--jobs", type=positive_int, metavar="N", help="runs at once (default: all of the call)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads per run (default: the cores shared out)")
    p.add_argument("--deadline", type=positive_float, required=True, metavar="SECONDS",
                   help="the wall-clock time this command may take, from its start: the job's time limit less what "
                        "runs before it (e.g. 14100 under a 4-hour Slurm --time)")
    p.add_argument("--reserve", type=positive_float, default=60.0, metavar="SECONDS",
                   help="runs are stopped this long before the deadline, to save, test and pack (default 60)")
    p.add_argument("--pack-mib", type=positive_float, default=15.0, metavar="MiB",
                   help="the largest tar file of packed runs in --out (default 15)")
    p.add_argument("--ten-view", dest="ten_view", action="store_true", default=None,
                   help="test each finished run on 10 views too (default: on CUDA only)")
    p.add_argument("--no-ten-view", dest="ten_view", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_gpu)


def run_gpu(args) -> int:
    from ..campaign.gpu import GpuCampaign, run_gpu_campaign
    from ..runs.store import set_threads

    set_threads(args.threads)
    c = GpuCampaign(out=Path(args.out), deadline=args.deadline, part=args.part, models=args.models or None, budget=args.budget,
                    iterations=args.iterations, data=args.data, data_dir=args.data_dir, runs=Path(args.runs),
                    device=args.device, precision=args.precision, compile=args.compile, cuda_graphs=args.cuda_graphs,
                    jobs=args.jobs, threads=args.threads, reserve=args.reserve, pack_mib=args.pack_mib,
                    ten_view=args.ten_view, seed=args.seed)
    return run_gpu_campaign(c)["status"]
