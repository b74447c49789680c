"""Shared training runs: one run directory per (model, shortcut, budget, seed, data), reused by every experiment.

Fig. 6 (degradation), Table 6 (depth), Fig. 7 (layer responses), the lesion study and the loss landscape all need the
same trained plain/residual CIFAR nets; each is trained once, in ``RUNS/<key>/``, and then only read. A finished run
(its ``metrics.jsonl`` ends with the trainer's ``final`` record) is skipped; an unfinished one with a
``checkpoint.pt`` is resumed exactly (the trainer's ``resume=True``); one that died before its first checkpoint is
started again.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..training.run_dir import code_version, read_metrics
from .budgets import Budget, get_budget

CIFAR_DATA = ("cifar10", "embedded", "synthetic")


@dataclass(frozen=True)
class Options:
    """What the command line decides for one experiment."""

    name: str
    budget: str = "short"
    seeds: int = 1
    data: str = "cifar10"
    data_dir: str | None = None
    out: str | None = None  # default results/<name>
    runs: str | None = None  # default: OUT/../runs (shared by every experiment written next to OUT)
    device: str = "auto"
    precision: str = "auto"
    depths: tuple[int, ...] | None = None  # override the experiment's default depths
    launch: bool = False  # ImageNet experiments: run the command lines instead of printing them
    progress: bool = False
    compile: bool = False  # torch.compile the training runs (its minutes of compile time pay off on long runs only)
    jobs: int = 1  # runs trained at once, each in its own process
    threads: int | None = None  # torch threads per process (default: torch's)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.name

    @property
    def runs_dir(self) -> Path:
        return Path(self.runs) if self.runs else self.out_dir.parent / "runs"

    @property
    def plan(self) -> Budget:
        return get_budget(self.budget)

    def command(self) -> str:
        """The command line that regenerates this experiment's outputs."""
        args = ["resnet", "reproduce", self.name, "--budget", self.budget, "--seeds", str(self.seeds),
                "--data", self.data]
        if self.data_dir:
            args += ["--data-dir", self.data_dir]
        if self.depths:
            args += ["--depths", ",".join(map(str, self.depths))]
        args += ["--out", str(self.out_dir)]
        if self.runs:
            args += ["--runs", self.runs]
        if self.device != "auto":
            args += ["--device", self.device]
        if self.precision != "auto":
            args += ["--precision", self.precision]
        if self.compile:
            args.append("--compile")
        if self.jobs != 1:
            args += ["--jobs", str(self.jobs)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.launch:
            args.append("--launch")
        return shlex.join(args)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(out=str(self.out_dir), runs=str(self.runs_dir), budget_plan=self.plan.to_dict(),
                 command=self.command(), code_version=code_version(), argv=sys.argv)
        return d


@dataclass(frozen=True)
class RunSpec:
    model: str  # e.g. "resnet20", "plain56"
    shortcut: str | None = None  # None: the model's default (A on CIFAR); plain nets have none
    seed: int = 0

    @property
    def plain(self) -> bool:
        return self.model.startswith("plain")

    @property
    def depth(self) -> int:
        return int(self.model.lstrip("abcdefghijklmnopqrstuvwxyz"))

    @property
    def label(self) -> str:
        kind = "plain" if self.plain else "ResNet"
        opt = f" ({self.shortcut})" if self.shortcut and self.shortcut != "A" else ""
        return f"{kind}-{self.depth}{opt}"

    def key(self, opts: Options) -> str:
        shortcut = "plain" if self.plain else (self.shortcut or "A")
        base = self.model.replace("plain", "").replace("resnet", "")
        family = "plain" if self.plain else "resnet"
        return f"{family}{base}-{shortcut}-{opts.budget}-s{self.seed}-{opts.data}"


@dataclass
class Run:
    spec: RunSpec
    path: Path
    metrics: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        finals = [r for r in self.metrics if r.get("final")]
        if not finals:
            raise UsageError(f"{self.path} has not finished; run the experiment again to resume it")
        return finals[-1]

    @property
    def curve(self) -> list[dict]:
        return [r for r in self.metrics if "val_error" in r and "train_error" in r and not r.get("final")]

    @property
    def final_train_error(self) -> float:
        """Training error over the last evaluation interval (augmented batches, as the trainer logs it)."""
        return self.curve[-1]["train_error"]

    @property
    def final_val_error(self) -> float:
        return self.final["val_error"]

    def weights(self, which: str = "last"):
        from ..weights.format import load_weights

        return load_weights(self.path / which)


class RunStopped(KeyboardInterrupt):
    """A training run stopped by a signal (Ctrl-C, SIGTERM) after saving its checkpoint: it resumes next time."""

    def __init__(self, path: Path, step: int, exit_code: int):
        super().__init__(f"{path} stopped at step {step}")
        self.path, self.step, self.exit_code = path, step, exit_code


def is_finished(path: Path) -> bool:
    m = path / "metrics.jsonl"
    return m.exists() and any(r.get("final") for r in read_metrics(m))


def check_data(opts: Options) -> None:
    if opts.data not in CIFAR_DATA:
        raise UsageError(f"{opts.name} trains CIFAR nets; --data must be one of {', '.join(CIFAR_DATA)}, "
                         f"not {opts.data!r}")


def ensure_run(spec: RunSpec, opts: Options, log=print) -> Run:
    """Train ``spec`` under ``opts``'s budget unless that run is finished already; resume it if it was cut short."""
    from ..training.checkpoint import checkpoint_files
    from ..training.trainer import TrainConfig, train

    plan = opts.plan
    path = opts.runs_dir / spec.key(opts)
    if not is_finished(path):
        resume = bool(checkpoint_files(path))
        if not resume and (path / "metrics.jsonl").exists():
            (path / "metrics.jsonl").unlink()  # a run that died before its first checkpoint starts over
        log(f"[reproduce] {'resuming' if resume else 'training'} {spec.label} ({plan.iterations} iterations) "
            f"in {path}")
        cfg = TrainConfig(model=spec.model, shortcut=None if spec.plain else spec.shortcut, data=opts.data,
                          data_dir=opts.data_dir, protocol="val", recipe=plan.recipe, iterations=plan.iterations, warmup=plan.warmup,
                          batch_size=plan.batch_size, seed=spec.seed, out=str(path), resume=resume,
                          device=opts.device, precision=opts.precision, compile=opts.compile,
                          eval_every=max(1, plan.iterations // plan.evaluations), progress=opts.progress)
        result = train(cfg)
        if result.get("stopped"):
            raise RunStopped(path, result["step"], result["exit_code"])
    else:
        log(f"[reproduce] reusing the finished run {path}")
    return Run(spec, path, read_metrics(path))


def ensure_runs(specs: list[RunSpec], opts: Options, log=print) -> list[Run]:
    """Every run of ``specs`` (in that order), training the missing ones first -- ``opts.jobs`` at a time, each in
    its own process with ``opts.threads`` threads (on a small shared CPU, single-threaded processes side by side
    waste less time waiting for each other than one process with several threads)."""
    check_data(opts)
    if opts.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {opts.jobs}")
    todo = list(dict.fromkeys(s for s in specs if not is_finished(opts.runs_dir / s.key(opts))))
    if opts.jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(opts.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=set_threads, initargs=(opts.threads,)) as pool:
            for _ in pool.map(_train_in_worker, [(s, opts) for s in todo]):
                pass
    return [ensure_run(s, opts, log) for s in specs]


def _train_in_worker(args: tuple[RunSpec, Options]) -> str:
    spec, opts = args
    return str(ensure_run(spec, opts, log=lambda m: print(m, flush=True)).path)


def analysis_runtime(opts: Options):
    """Device and precision of the analyses (eager: they run each net a handful of times)."""
    from ..runtime import resolve_runtime

    return resolve_runtime(opts.device, opts.precision, compile=False)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def seeds(opts: Options) -> range:
    if opts.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {opts.seeds}")
    return range(opts.seeds)
