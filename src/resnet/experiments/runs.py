"""Shared training runs: one run directory per training setting, reused by every experiment.

Fig. 6 (degradation), Table 6 (depth), Fig. 7 (layer responses), the lesion study and the loss landscape all need the
same trained plain/residual CIFAR nets; each is trained once, in ``RUNS/<key>/``, and then only read. A finished run
(its ``metrics.jsonl`` ends with the trainer's ``final`` record) is skipped; an unfinished one with a
``checkpoint.pt`` is resumed exactly (the trainer's ``resume=True``); one that died before its first checkpoint is
started again.

The key names every setting that changes a run's numbers: model, shortcut, recipe, iterations, warm-up, batch,
evaluation interval (the logged training error is that of the last interval), resolved precision, seed and data, e.g.
``resnet20-A-paper-1000it-wu100-b128-ev100-bf16-s0-cifar10``. Before a run directory is reused or resumed, its
``config.json`` is checked against those settings and the resolved recipe. Run directories named by the earlier key
(``resnet20-A-short-s0-cifar10``: model, shortcut, budget name, seed, data) are still found, and used only when their
``config.json`` matches. The code version is recorded in each run's ``config.json`` but is not part of the key:
every commit would otherwise retrain every run.
"""

from __future__ import annotations

import json
import multiprocessing
import shlex
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..data.sources import data_source, names
from ..errors import UsageError
from ..runtime import resolve_runtime
from ..training.checkpoint import checkpoint_files
from ..training.recipes import resolve_recipe
from ..training.run_dir import code_version, read_metrics
from ..weights.format import load_weights
from .budgets import Budget, get_budget


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
    evaluations: int | None = None  # instead of the budget's (the campaign's first runs evaluated less often)
    checkpoint_minutes: float = 10.0  # a checkpoint this often between evaluations (TrainConfig.checkpoint_minutes)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.name

    @property
    def runs_dir(self) -> Path:
        return Path(self.runs) if self.runs else self.out_dir.parent / "runs"

    @property
    def plan(self) -> Budget:
        budget = get_budget(self.budget)
        return replace(budget, evaluations=self.evaluations) if self.evaluations else budget

    @property
    def resolved_precision(self) -> str:
        """The precision the training runs use on this machine (``auto`` resolved: bf16 where it is native)."""
        return resolve_runtime(self.device, self.precision, compile=False).precision

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
                 command=self.command(), code_version=source_version(), argv=sys.argv)
        return d

    @classmethod
    def from_config(cls, config: dict) -> "Options":
        """The options a report's ``config.json`` was written with (``runs`` from its command line: the field of that
        name may hold the experiment's list of run directories instead)."""
        args = shlex.split(config.get("command", ""))
        runs = args[args.index("--runs") + 1] if "--runs" in args[:-1] else None
        fields = {k: config[k] for k in ("budget", "seeds", "data", "data_dir", "out", "device", "precision",
                                         "launch", "progress", "compile", "jobs", "threads") if k in config}
        depths = config.get("depths")
        return cls(name=config["name"], runs=runs, depths=tuple(depths) if depths else None, **fields)


def source_version() -> str:
    """The code version a report records: the trainer's ``code_version()``, but ``-dirty`` only when the package's own
    files differ from the commit (results, docs and tests being rewritten do not change what computed them)."""
    version = code_version()
    if not version.endswith("-dirty"):
        return version
    package = Path(__file__).resolve().parents[1]
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "."], cwd=package,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return version
    if status.returncode != 0 or status.stdout.strip():
        return version
    return version[:-len("-dirty")]


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

    def train_config(self, opts: Options) -> dict:
        """The trainer's settings for this run under ``opts``'s budget (the fields of ``TrainConfig`` that decide
        what is trained; device, output folder and progress bars do not)."""
        plan = opts.plan
        return {"model": self.model, "shortcut": None if self.plain else self.shortcut, "data": opts.data,
                "protocol": "val", "recipe": plan.recipe, "iterations": plan.iterations, "warmup": plan.warmup,
                "batch_size": plan.batch_size, "seed": self.seed,
                "eval_every": max(1, plan.iterations // plan.evaluations)}

    def recipe(self, opts: Options):
        plan = opts.plan
        return resolve_recipe(plan.recipe, "cifar", self.depth, iterations=plan.iterations, batch_size=plan.batch_size,
                              warmup=plan.warmup)

    def key(self, opts: Options) -> str:
        """Every setting that changes this run's numbers (see the module's docstring)."""
        shortcut = "plain" if self.plain else (self.shortcut or "A")
        recipe = self.recipe(opts)
        cfg = self.train_config(opts)
        return (f"{self.model}-{shortcut}-{recipe.name}-{recipe.iterations}it-wu{recipe.warmup_iterations}"
                f"-b{recipe.batch_size}-ev{cfg['eval_every']}-{opts.resolved_precision}-s{self.seed}-{opts.data}")

    def legacy_key(self, opts: Options) -> str:
        """The key of run directories written before the key named every setting: model, shortcut, budget name, seed
        and data (``resnet20-A-short-s0-cifar10``)."""
        shortcut = "plain" if self.plain else (self.shortcut or "A")
        return f"{self.model}-{shortcut}-{opts.budget}-s{self.seed}-{opts.data}"

    def mismatches(self, path: Path, opts: Options) -> list[str]:
        """How the run in ``path`` (its ``config.json``) differs from this spec under ``opts``: ``[]`` when it is
        this run; ``["no config.json"]`` when it cannot tell."""
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return ["no readable config.json"]
        ran = dict(config.get("config", {}))
        want_cfg = self.train_config(opts)
        if not self.plain:  # no shortcut given means option A on the CIFAR nets: the same run
            ran["shortcut"], want_cfg["shortcut"] = ran.get("shortcut") or "A", want_cfg["shortcut"] or "A"
        out = [f"{k}={ran.get(k)!r} (asked: {v!r})" for k, v in want_cfg.items() if ran.get(k) != v]
        precision = config.get("runtime", {}).get("precision")
        if precision != opts.resolved_precision:
            out.append(f"precision={precision!r} (asked: {opts.resolved_precision!r})")
        want = self.recipe(opts).to_dict()
        had = config.get("recipe", {})
        out += [f"recipe {k}={had[k]!r} (asked: {want[k]!r})" for k in sorted(set(want) & set(had) - {"note"})
                if had[k] != want[k] and not (isinstance(want[k], (list, tuple)) and list(want[k]) == had[k])]
        return out


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
        return load_weights(self.path / which)


class RunStopped(KeyboardInterrupt):
    """A training run stopped by a signal (Ctrl-C, SIGTERM) after saving its checkpoint: it resumes next time."""

    def __init__(self, path: Path, step: int, signum: int):
        super().__init__(f"{path} stopped at step {step}")
        self.path, self.step, self.signum = path, step, signum


def is_finished(path: Path) -> bool:
    m = path / "metrics.jsonl"
    return m.exists() and any(r.get("final") for r in read_metrics(m))


def check_data(opts: Options) -> None:
    if not data_source(opts.data).cifar10_images:
        raise UsageError(f"{opts.name} trains CIFAR-10 nets; --data must be one of "
                         f"{', '.join(names(cifar10_images=True))}, not {opts.data!r}")


def run_path(spec: RunSpec, opts: Options, log=print) -> Path:
    """Where ``spec``'s run lives: ``RUNS/<key>``, or the directory of its legacy key when that one holds this very
    run (its ``config.json`` matches). A directory under the new key that holds another run is refused."""
    path = opts.runs_dir / spec.key(opts)
    if path.exists() and (path / "config.json").exists():
        wrong = spec.mismatches(path, opts)
        if wrong:
            raise UsageError(f"{path} holds another run than {spec.label} under this budget: {'; '.join(wrong)}; "
                             "move it away or choose another --runs folder")
        return path
    legacy = opts.runs_dir / spec.legacy_key(opts)
    if legacy.is_dir() and not path.exists():
        wrong = spec.mismatches(legacy, opts)
        if not wrong:
            return legacy
        log(f"[reproduce] not using {legacy} for {spec.label}: {'; '.join(wrong)}; training in {path}")
    return path


def ensure_run(spec: RunSpec, opts: Options, log=print, path: Path | None = None) -> Run:
    """Train ``spec`` under ``opts``'s budget unless that run is finished already; resume it if it was cut short.
    ``path``: the run's directory when the caller has found it (default: ``run_path``)."""
    # The trainer (its data, evaluation and image decoding) only when a run trains: `resnet --help` imports this
    # module (cli/campaign.py registers its commands from it).
    from ..training.trainer import TrainConfig, train

    plan = opts.plan
    path = path or run_path(spec, opts, log)
    if not is_finished(path):
        resume = bool(checkpoint_files(path))
        if not resume and (path / "metrics.jsonl").exists():
            (path / "metrics.jsonl").unlink()  # a run that died before its first checkpoint starts over
        log(f"[reproduce] {'resuming' if resume else 'training'} {spec.label} ({plan.iterations} iterations) "
            f"in {path}")
        cfg = TrainConfig(**spec.train_config(opts), data_dir=opts.data_dir, out=str(path), resume=resume,
                          device=opts.device, precision=opts.precision, compile=opts.compile, progress=opts.progress,
                          checkpoint_minutes=opts.checkpoint_minutes)
        result = train(cfg)
        if result.stopped_by is not None:
            raise RunStopped(path, result.step, result.stopped_by)
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
    todo = list(dict.fromkeys(s for s in specs if not is_finished(run_path(s, opts, log=lambda m: None))))
    if opts.jobs > 1 and len(todo) > 1:
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
    return resolve_runtime(opts.device, opts.precision, compile=False)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def seeds(opts: Options) -> range:
    if opts.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {opts.seeds}")
    return range(opts.seeds)
