"""The run store: one run directory per training setting, reused by every experiment and the campaign.

Fig. 6 (degradation), Table 6 (depth), Fig. 7 (layer responses), the lesion study and the loss landscape all need the
same trained plain/residual CIFAR nets; each is trained once, in ``RUNS/<key>/`` (``spec.RunSpec.key``), and then only
read. A finished run (its ``metrics.jsonl`` ends with the trainer's ``final`` record) is skipped; an unfinished one
with a ``checkpoint.pt`` is resumed exactly (the trainer's ``resume=True``); one that died before its first checkpoint
is started again. Before a run directory is reused or resumed, its ``config.json`` is checked against the settings
and the resolved recipe.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ..data.sources import data_source, names
from ..errors import UsageError
from ..training.checkpoint import checkpoint_files
from ..training.metrics import Final, Metrics, read_metrics
from ..weights.format import load_weights
from .spec import Options, RunSpec

# The store's progress lines ("[reproduce] training ..."): the command line shows them as they are.
logger = logging.getLogger("resnet.runs")


@dataclass
class Run:
    spec: RunSpec
    path: Path
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def final(self) -> Final:
        if self.metrics.final is None:
            raise UsageError(f"{self.path} has not finished; run the experiment again to resume it")
        return self.metrics.final

    @property
    def curve(self) -> list[dict]:
        """The run's error curve as a report keeps it: its evaluations' lines, as metrics.jsonl holds them."""
        return [e.to_json() for e in self.metrics.curve]

    @property
    def final_train_error(self) -> float:
        """Training error over the last evaluation interval (augmented batches, as the trainer logs it)."""
        return self.metrics.curve[-1].train_error

    @property
    def final_val_error(self) -> float:
        return self.final.val_error

    @property
    def best_val_error(self) -> float:
        """The best evaluation's error; the final one for a record of a version that did not log it."""
        best = self.final.best_val_error
        return self.final_val_error if best is None else best

    def weights(self, which: str = "last"):
        return load_weights(self.path / which)


class RunStopped(KeyboardInterrupt):
    """A training run stopped by a signal (Ctrl-C, SIGTERM) after saving its checkpoint: it resumes next time."""

    def __init__(self, path: Path, step: int, signum: int):
        super().__init__(f"{path} stopped at step {step}")
        self.path, self.step, self.signum = path, step, signum


def is_finished(path: Path) -> bool:
    return read_metrics(path).finished


def check_data(opts: Options) -> None:
    if not data_source(opts.data).cifar10_images:
        raise UsageError(f"{opts.name} trains CIFAR-10 nets; --data must be one of "
                         f"{', '.join(names(cifar10_images=True))}, not {opts.data!r}")


def run_path(spec: RunSpec, opts: Options, log: Callable[[str], None] = logger.info) -> Path:
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


def ensure_run(spec: RunSpec, opts: Options, log: Callable[[str], None] = logger.info, path: Path | None = None) -> Run:
    """Train ``spec`` under ``opts``'s budget unless that run is finished already; resume it if it was cut short.
    ``path``: the run's directory when the caller has found it (default: ``run_path``)."""
    # The trainer (its data, evaluation and image decoding) only when a run trains: `resnet --help` imports this
    # module (cli/campaign.py registers its commands from it).
    from ..training.trainer import train

    plan = opts.plan
    path = path or run_path(spec, opts, log)
    if not is_finished(path):
        resume = bool(checkpoint_files(path))
        if not resume and (path / "metrics.jsonl").exists():
            (path / "metrics.jsonl").unlink()  # a run that died before its first checkpoint starts over
        log(f"[reproduce] {'resuming' if resume else 'training'} {spec.label} ({plan.iterations} iterations) "
            f"in {path}")
        cfg = replace(spec.train_config(opts), data_dir=opts.data_dir, out=str(path), resume=resume,
                      device=opts.device, precision=opts.precision, compile=opts.compile, progress=opts.progress,
                      checkpoint_minutes=opts.checkpoint_minutes)
        result = train(cfg)
        if result.stopped_by is not None:
            raise RunStopped(path, result.step, result.stopped_by)
    else:
        log(f"[reproduce] reusing the finished run {path}")
    return Run(spec, path, read_metrics(path))


def ensure_runs(specs: list[RunSpec], opts: Options, log: Callable[[str], None] = logger.info) -> list[Run]:
    """Every run of ``specs`` (in that order), training the missing ones first -- ``opts.jobs`` at a time, each in
    its own process with ``opts.threads`` threads (on a small shared CPU, single-threaded processes side by side
    waste less time waiting for each other than one process with several threads)."""
    check_data(opts)
    if opts.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {opts.jobs}")
    todo = list(dict.fromkeys(s for s in specs if not is_finished(run_path(s, opts, log=lambda m: None))))
    if opts.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(opts.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(opts.threads,)) as pool:
            for _ in pool.map(_train_in_worker, [(s, opts) for s in todo]):
                pass
    return [ensure_run(s, opts, log) for s in specs]


def _start_worker(threads: int | None) -> None:
    """A training process of ``ensure_runs``: its threads, and its progress lines on its standard output, as the
    command line that started it shows its own."""
    set_threads(threads)
    logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)


def _train_in_worker(args: tuple[RunSpec, Options]) -> str:
    spec, opts = args
    return str(ensure_run(spec, opts).path)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
