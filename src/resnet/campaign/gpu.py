"""Table 6 on one GPU within a job's time limit: ResNet-20/32/44/56/110 and plain-20/32/44/56 at the paper's budget
(Sec. 4.2: 64k iterations of batch 128), several runs at once on the one GPU, stopped with a checkpoint before a
wall-clock deadline and resumed by the same command: for a batch job under a time limit (Slurm's ``--time``, say), a
spot instance that may be taken back, or any GPU borrowed for less time than the table needs.

Table 6 takes longer than most such jobs, so the nets come in two parts, the most valuable first: part 1 is ResNet-20, ResNet-56 and ResNet-110 (Table 6's ends and the deepest net the paper reports) and their
plain twins at 20 and 56 (Fig. 6's degradation at both ends); part 2 is the depths between, 32 and 44, and resumes
whatever part 1 left unfinished first. Each run is an ordinary ``resnet train`` process with the settings ``resnet
reproduce`` gives the same run (``runs.spec.RunSpec``: the run's folder is named by its key), so every run here is one of
the project's real runs: the trainer, its recipe (ResNet-110's warm-up included), its checkpoints and its metrics.
Each process holds the whole dataset on the GPU (``data.batches.InMemoryBatches``); bf16, channels_last,
``torch.compile`` and CUDA graphs are the CUDA defaults here.

The deadline: at ``deadline - reserve`` seconds every running run is sent SIGTERM, which the trainer turns into a
checkpoint and a clean exit (a run still importing is sent it once its handlers are in place: its lock file names
it); one that has not exited ``reserve / 2`` seconds later is killed. No run is started after that point, so the
command ends by its deadline. The same command again (the next job) resumes every unfinished run from its
checkpoint.

What it leaves in the output folder (``gpu_summary.py``): ``summary.json``, ``summary.md`` (a Table 6: iterations,
validation error single-image and 10-view, wall time, images/s), ``log.txt``, and the runs of this call as whole run
folders in ``runs-N.tar`` files of a bounded size (``--pack-mib``): a finished run with its last weights (the
project's format, ``weights.format``), metrics, config and curves; an unfinished one with its checkpoint instead. The
output folder alone is then enough to resume elsewhere: where the next job runs on another machine, without the run
folders of this one, unpack the tar files into a runs folder and give it as ``--runs``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from ..data.sources import data_source
from ..errors import UsageError
from ..models import build_model, model_config
from ..models.summary import count_macs
from ..runs import store
from ..runs.budgets import get_budget
from ..runs.spec import Options, RunSpec
from ..runs.store import is_finished
from ..runtime import default_compile, resolve_device, resolve_runtime
from ..training.checkpoint import CHECKPOINT
from ..training.metrics import read_metrics
from ..training.run_dir import LOCK
from .gpu_summary import LOG, pack_runs, render, row, saved_step, ten_view
from .status import run_status

DEFAULT_RUNS = Path("runs") / "gpu-campaign"  # inside the checkout, git-ignored: the next job on this machine finds it
PARTS = {"1": ("resnet20", "resnet56", "resnet110", "plain20", "plain56"),
         "2": ("resnet32", "resnet44", "plain32", "plain44")}
TABLE6 = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain32", "plain44", "plain56")
logger = logging.getLogger("resnet.campaign")  # the call's lines ("[gpu-campaign] ..."), shown as they are


@dataclass(frozen=True)
class GpuCampaign:
    out: Path  # the summary, the log and the packed runs
    deadline: float  # seconds the whole command may take: the job's time limit, less what runs before this command
    part: str = "1"  # "1", "2" or "all"
    models: tuple[str, ...] | None = None  # instead of the part's nets
    budget: str = "paper"
    iterations: int | None = None  # instead of the budget's (a shorter try; the tests)
    data: str = "cifar10"
    data_dir: str | None = "data"
    runs: Path = DEFAULT_RUNS
    device: str = "cuda"
    precision: str = "auto"
    compile: bool | None = None  # None: the runtime's default (on with CUDA and Triton)
    cuda_graphs: bool | None = None  # None: on where compiling on CUDA
    jobs: int | None = None  # processes at once; None: every run of the call
    threads: int | None = None  # CPU threads per process; None: the cores shared out
    reserve: float = 60.0  # seconds before the deadline for the stopping runs' saves, the 10-view tests, packing
    pack_mib: float = 15.0  # the largest tar file of packed runs, in MiB (a checkpoint of ResNet-110 takes about 7)
    ten_view: bool | None = None  # None: on CUDA only (on a CPU it costs as much as minutes of training)
    seed: int = 0


@dataclass
class Worker:
    """One run's process in this call."""
    spec: RunSpec
    path: Path
    graphs: bool
    proc: subprocess.Popen | None = None
    start_step: int = 0  # the step it resumed at in this call
    stop_sent: bool = False
    killed: bool = False
    retried: bool = False
    outcome: str = "not started"
    projected: bool = False


@dataclass
class _Call:
    """What one call resolved: its settings, its clock and its log."""
    c: GpuCampaign
    opts: Options
    compile: bool
    graphs: bool
    jobs: int
    threads: int
    start: float
    say: Callable[[str], None]

    @property
    def stop_at(self) -> float:  # the runs are sent SIGTERM
        return self.start + self.c.deadline - self.c.reserve

    @property
    def kill_at(self) -> float:  # the runs still alive are killed
        return self.start + self.c.deadline - self.c.reserve / 2


def run_gpu_campaign(c: GpuCampaign, log: Callable[[str], None] = logger.info) -> dict:
    """Train the call's runs to the deadline; write the summary and the packed runs into ``c.out``. Returns the
    summary (its ``status``: 0 all finished, 4 some stopped or not started by the deadline, 1 some failed)."""
    start = time.monotonic()
    lines: list[str] = []

    def say(message: str) -> None:
        lines.append(message)
        log(message)

    opts, models = _check(c)
    paths = {m: store.run_path(RunSpec(m, seed=c.seed), opts, log=say) for m in models}
    todo = [m for m in models if not is_finished(paths[m])]
    device = resolve_device(c.device)
    compile = default_compile(device) if c.compile is None else c.compile
    graphs = (compile and device.type == "cuda") if c.cuda_graphs is None else c.cuda_graphs
    jobs = c.jobs or max(1, len(todo))
    call = _Call(c, opts, compile, graphs, jobs, c.threads or max(1, (os.cpu_count() or 1) // jobs), start, say)
    say(f"[gpu-campaign] budget {opts.plan.name} ({opts.plan.iterations} iterations), part {c.part}: "
        f"{', '.join(models)}; {len(models) - len(todo)} finished already; {len(todo)} to train, {jobs} at once, "
        f"{call.threads} thread(s) each, on {c.device} ({opts.resolved_precision}, compile {'on' if compile else 'off'}"
        f", CUDA graphs {'on' if graphs else 'off'}); runs in {c.runs}")
    for line in estimate(todo, paths, opts, call.stop_at - time.monotonic()):
        say(line)

    rt = resolve_runtime(c.device, opts.resolved_precision, compile=False)
    held_out = functools.cache(lambda: data_source(c.data).open("val", c.data_dir, download=False))

    def test_ten_views(path: Path) -> None:
        if c.ten_view or (c.ten_view is None and rt.device.type == "cuda"):
            _ten_view_or_say(path, held_out, rt, say)

    workers = [Worker(RunSpec(m, seed=c.seed), paths[m], graphs) for m in todo]
    _supervise(workers, call, test_ten_views)
    for m in models:  # finished in an earlier call, or while the stop was too close for the test
        if is_finished(paths[m]) and time.monotonic() < start + c.deadline - 20:
            test_ten_views(paths[m])

    outcomes = {w.spec.model: w.outcome for w in workers}
    rows = [row(m, p, opts, outcomes.get(m)) for m, p in _table_runs(models, paths, opts, c.seed)]
    summary = {"budget": opts.plan.name, "iterations": opts.plan.iterations, "part": c.part, "models": list(models),
               "device": _device_name(device), "precision": opts.resolved_precision, "compile": compile,
               "cuda_graphs": graphs, "jobs": jobs, "deadline_s": c.deadline,
               "seconds": round(time.monotonic() - start),
               "command": shlex.join(["resnet", *sys.argv[1:]]),
               "status": 1 if any(o.startswith("failed") for o in outcomes.values())
               else 0 if all(is_finished(paths[m]) for m in models) else 4,
               "runs": [asdict(r) for r in rows]}
    summary["packed"], summary["not_packed"] = pack_runs([paths[m] for m in models if paths[m].is_dir()], c.out,
                                                         limit=int(c.pack_mib * 2**20))
    (c.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (c.out / "summary.md").write_text(render(summary))
    say(f"[gpu-campaign] {sum(r.state == 'finished' for r in rows)} of {len(rows)} runs finished; summary and "
        f"{len(summary['packed'])} tar file(s) in {c.out} after {summary['seconds']} s")
    (c.out / "log.txt").write_text("\n".join(lines) + "\n")
    return summary


def _supervise(workers: list[Worker], call: _Call, on_finished: Callable[[Path], None]) -> None:
    """Run ``workers``, ``call.jobs`` at a time, until each has ended: none starts after the stop; at the stop each
    is sent SIGTERM once its trainer will save (``_ready``), and what still runs at ``kill_at`` is killed. A run that
    fails with CUDA graphs is resumed once without them."""
    say, queue, running = call.say, list(workers), []
    next_status = time.monotonic() + 60
    try:
        while queue or running:
            now = time.monotonic()
            while queue and len(running) < call.jobs and now < call.stop_at:
                running.append(queue.pop(0))
                _launch(running[-1], call)
            for w in [w for w in running if w.proc.poll() is not None]:
                running.remove(w)
                rc = w.proc.returncode
                if rc not in (0, 128 + signal.SIGTERM) and w.graphs and not w.stop_sent and not w.retried:
                    say(f"[gpu-campaign] {w.spec.label} failed with CUDA graphs (exit {rc}): {_last_line(w)}; "
                        "resuming it without them")
                    w.graphs, w.retried = False, True
                    queue.insert(0, w)
                    continue
                w.outcome = _outcome(w, rc)
                say(f"[gpu-campaign] {w.spec.label}: {w.outcome}")
                if rc == 0 and time.monotonic() < call.stop_at - 30:
                    on_finished(w.path)
            if now >= call.stop_at:
                for w in queue:
                    w.outcome = "not started: the deadline came first"
                    say(f"[gpu-campaign] {w.spec.label}: {w.outcome}")
                queue = []
                for w in running:
                    if not w.stop_sent and (_ready(w) or now >= call.kill_at):
                        say(f"[gpu-campaign] deadline: stopping {w.spec.label} (it saves a checkpoint)")
                        w.proc.send_signal(signal.SIGTERM)
                        w.stop_sent = True
                    if now >= call.kill_at and not w.killed:
                        w.proc.kill()
                        w.killed = True
            if running and now >= next_status:
                say(f"[gpu-campaign] {now - call.start:.0f} s: " + ", ".join(
                    f"{w.spec.model} {_evaluated(w.path)}/{call.opts.plan.iterations}" for w in running))
                next_status = now + 60
            for w in running:
                _project(w, call)
            time.sleep(0.5)
    finally:  # only if the supervisor itself stops (Ctrl-C, a bug): its runs still save their checkpoints
        for w in running:
            w.proc.terminate()
        for w in running:
            try:
                w.proc.wait(timeout=call.c.reserve / 2)
            except subprocess.TimeoutExpired:
                w.proc.kill()


def _check(c: GpuCampaign) -> tuple[Options, tuple[str, ...]]:
    """The call's options and nets, or a UsageError for bad input, before anything is started."""
    if c.part not in ("1", "2", "all"):
        raise UsageError(f"unknown part {c.part!r}; choose 1 (the most valuable runs), 2 (the rest) or all")
    if not 0 < c.reserve < c.deadline:
        raise UsageError(f"--reserve ({c.reserve:g} s) must be above 0 and below --deadline ({c.deadline:g} s)")
    get_budget(c.budget)
    # --iterations: a budget of its own name (Options.plan), so that its runs' legacy keys differ from the full budget's
    opts = Options(name="gpu-campaign", budget=c.budget, iterations=c.iterations, data=c.data, data_dir=c.data_dir,
                   runs=str(c.runs), device=c.device, precision=c.precision)
    store.check_data(opts)
    resolve_runtime(c.device, c.precision, compile=False)  # no GPU, an unknown device or precision: refused here
    for m in c.models or ():
        if model_config(m).family != "cifar":
            raise UsageError(f"{m} is not a CIFAR net; choose from {', '.join(TABLE6)}")
    try:
        c.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write the output folder {c.out}: {e.strerror or e}") from None
    data_source(c.data).open("train", c.data_dir, download=False)  # decoded once here, not by every process
    if c.models:
        return opts, tuple(dict.fromkeys(c.models))
    if c.part == "all":
        return opts, PARTS["1"] + PARTS["2"]
    if c.part == "1":
        return opts, PARTS["1"]
    left = tuple(m for m in PARTS["1"] if _started(store.run_path(RunSpec(m, seed=c.seed), opts, log=_quiet)))
    return opts, left + PARTS["2"]


def _quiet(message: str) -> None:
    pass


def _started(path: Path) -> bool:
    return (path / CHECKPOINT).exists() and not is_finished(path)


def _launch(w: Worker, call: _Call) -> None:
    """Start ``w``'s run as a ``resnet train`` process with the settings of its key, resuming its checkpoint."""
    c, opts, threads = call.c, call.opts, call.threads
    cfg = replace(w.spec.train_config(opts), out=str(w.path.resolve()), resume=True, device=c.device,
                  precision=opts.resolved_precision, channels_last=True, compile=call.compile, progress=False,
                  cuda_graphs=w.graphs,
                  # read by the sources that have files (cifar10), ignored by the built-in ones
                  data_dir=str(Path(c.data_dir).resolve()) if c.data_dir else None)
    args = [sys.executable, "-m", "resnet", "train", *cfg.arguments()]
    src = str(Path(__file__).resolve().parents[2])  # the processes run this very code
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TORCHINDUCTOR_COMPILE_THREADS=str(threads),
               PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    w.path.mkdir(parents=True, exist_ok=True)
    with open(w.path / LOG, "a") as out:
        w.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    w.start_step = saved_step(w.path)
    call.say(f"[gpu-campaign] started {w.spec.label} (process {w.proc.pid}): "
             + (f"resuming at step {w.start_step}" if w.start_step else "from the start") + f", {w.path.name}")


def _ready(w: Worker) -> bool:
    """Whether ``w``'s process holds its run's lock, i.e. its trainer turns SIGTERM into a checkpoint."""
    try:
        return (w.path / LOCK).read_text().startswith(f"PID {w.proc.pid} ")
    except OSError:
        return False


def _evaluated(path: Path) -> int:
    """The step of a run's last evaluation (0 for none): its progress, read without opening its checkpoint."""
    return read_metrics(path).step


def _outcome(w: Worker, rc: int) -> str:
    # Finished is what the run folder says, whatever the exit status: a SIGTERM sent as the run ends can land during
    # the interpreter's shutdown, when Python has restored the default handler, after the last weights were saved.
    final = read_metrics(w.path).final
    if final is not None:
        return f"finished: {final.step} iterations, {final.eval_split} error {final.val_error:.2f}%"
    if rc == 128 + signal.SIGTERM:
        return f"stopped at the deadline with a checkpoint at step {saved_step(w.path)}; the same command resumes it"
    if w.killed or (w.stop_sent and rc < 0):
        return (f"killed at the deadline without saving (it resumes from step {saved_step(w.path)}, its last "
                "checkpoint)")
    return f"failed (exit {rc}): {_last_line(w)}; its output is in {w.path / LOG}"


def _last_line(w: Worker) -> str:
    try:
        return ([x for x in (w.path / LOG).read_text().splitlines() if x.strip()] or ["no output"])[-1][:300]
    except OSError:
        return "no output"


def _project(w: Worker, call: _Call) -> None:
    """Once a run's rate is measured (two evaluations in this process), say when it ends, against the stop."""
    if w.projected:
        return
    mine = [e for e in read_metrics(w.path).evaluations if e.seconds is not None and e.step > w.start_step]
    if len(mine) < 2:
        return
    w.projected = True
    opts, stop_at = call.opts, call.stop_at
    per_step = (mine[-1].seconds - mine[-2].seconds) / (mine[-1].step - mine[-2].step)
    left = (opts.plan.iterations - mine[-1].step) * per_step
    batch = w.spec.recipe(opts).batch_size
    reach = mine[-1].step + (stop_at - time.monotonic()) / per_step
    call.say(f"[gpu-campaign] {w.spec.label}: measured {per_step * 1000:.1f} ms per iteration ({batch / per_step:,.0f} "
             f"images/s, evaluation included), {left:.0f} s to go: "
             + ("ends before the stop" if time.monotonic() + left < stop_at
                else f"does not fit; expect step ~{int(reach)} of {opts.plan.iterations} at the stop"))


@functools.lru_cache(maxsize=None)
def _macs(model: str) -> int:
    return count_macs(build_model(model), 32)


def estimate(models: list[str], paths: dict[str, Path], opts: Options, seconds: float) -> list[str]:
    """The work left, and the time it needs at the rates measured in earlier calls (a net not measured yet: from a
    measured one, scaled by multiply-adds); without any measurement, the rate the GPU would have to sustain."""
    if not models:
        return []
    batch = {m: RunSpec(m).recipe(opts).batch_size for m in models}
    status = {m: run_status(paths[m], opts.plan.iterations, running=False) for m in models}
    left = {m: opts.plan.iterations - status[m].step for m in models}
    # One training image costs about three forward passes (forward, and a backward pass of about twice its work).
    work = sum(left[m] * batch[m] * 3 * _macs(m) for m in models)
    lines = [f"[gpu-campaign] work left: {sum(left.values()):,} iterations, {work:.2e} multiply-adds; to end by the "
             f"stop ({seconds:.0f} s from now, start-up and compilation included) the runs together need "
             f"{work / max(seconds, 1):.2e} multiply-adds/s"]
    measured = {m: s.seconds_per_step for m, s in status.items() if s.seconds_per_step}
    if measured:
        ref = next(iter(measured))
        need = {m: left[m] * measured.get(m, measured[ref] * _macs(m) / _macs(ref)) for m in models}
        late = [m for m in models if need[m] > seconds]
        lines.append(f"[gpu-campaign] at the rates measured in earlier calls ({', '.join(measured)}; the others "
                     f"scaled by multiply-adds), the longest run needs {max(need.values()):.0f} s: "
                     + (f"{', '.join(late)} will not finish in this call" if late else "all fit"))
    else:
        lines.append("[gpu-campaign] no rate measured on this machine yet: each run says when it will end once it has "
                     "been timed over an evaluation interval")
    return lines


def _ten_view_or_say(path: Path, held_out: Callable, rt, say) -> None:
    """``ten_view`` on ``held_out()``, whose failure (out of memory beside the runs, say) is reported, not raised: it
    is an extra, and the supervisor must go on watching the runs' deadline."""
    try:
        ten_view(path, held_out(), rt)
    except Exception as e:  # noqa: BLE001 - any failure of the extra test; the runs matter more
        say(f"[gpu-campaign] the 10-view test of {path.name} failed ({type(e).__name__}: {e}); skipped")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _table_runs(models: tuple[str, ...], paths: dict[str, Path], opts: Options, seed: int) -> list[tuple[str, Path]]:
    """The summary's rows: Table 6's nets in the paper's order, those of this call and those an earlier call
    trained in the same runs folder, then any other net of this call."""
    found = {m: paths.get(m) or store.run_path(RunSpec(m, seed=seed), opts, log=_quiet) for m in TABLE6}
    return ([(m, found[m]) for m in TABLE6 if m in models or found[m].is_dir()]
            + [(m, paths[m]) for m in models if m not in TABLE6])


