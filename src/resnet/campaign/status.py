"""``resnet runs``: what the campaign has done, is running and has left, and the time each run still needs at the rate
it was measured at (a run not started: from the latest measured run, scaled by multiply-adds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from ..models import build_model
from ..models.summary import count_macs
from ..runs.budgets import get_budget
from ..runs.spec import Options
from ..runs.store import is_finished
from ..training.checkpoint import CHECKPOINT
from ..training.metrics import METRICS, Metrics, read_metrics
from ..training.run_dir import writer
from .plan import PLAN, Entry, record_path, run_path


@dataclass
class RunStatus:
    """One run of the campaign as ``resnet runs`` shows it (``--json``: these fields, in this order)."""
    run: str  # the run directory's name
    state: str  # done, running, stopped (a checkpoint, no process), waiting (not started)
    step: int
    iterations: int
    val_error: float | None  # the final record's, else the last evaluation's
    val_error_tta: float | None  # under the recipe's test protocol, once finished
    seconds: float | None  # the run's wall time so far
    seconds_per_step: float | None  # measured, or (``rate_from``) taken from another run
    rate_from: str | None
    model: str | None = None
    budget: str | None = None
    ships_as: str | None = None
    why: str | None = None
    seconds_left: float | None = None


@dataclass
class CampaignStatus:
    runs_dir: str
    running: list[dict] = field(default_factory=list)  # {"run": name, "writer": "PID N on HOST"}
    runs: list[RunStatus] = field(default_factory=list)
    seconds_left: float | None = None  # None while some run's rate is unknown

    def to_json(self) -> dict:
        return asdict(self)


def _seconds_per_step(metrics: Metrics, last: int = 5) -> float | None:
    """Wall seconds per iteration over the last evaluations (training, evaluation and checkpoints together), as this
    run was measured on the machine it last ran on."""
    evals = [e for e in metrics.evaluations if e.seconds is not None]
    if len(evals) < 2:
        return evals[0].seconds / evals[0].step if evals and evals[0].step else None
    a, b = evals[max(0, len(evals) - 1 - last)], evals[-1]
    return (b.seconds - a.seconds) / (b.step - a.step) if b.step > a.step else None


def run_status(path: Path, iterations: int, running: bool) -> RunStatus:
    metrics = read_metrics(path)
    evals = [e for e in metrics.evaluations if e.val_error is not None]
    final = metrics.final
    step = final.step if final else (evals[-1].step if evals else 0)
    rate = _seconds_per_step(metrics)
    if final:
        state = "done"
    elif running:
        state = "running"
    elif step or (path / CHECKPOINT).exists():
        state = "stopped"
    else:
        state = "waiting"
    shown = final or (evals[-1] if evals else None)
    return RunStatus(run=path.name, state=state, step=step, iterations=iterations,
                     val_error=shown.val_error if shown else None,
                     val_error_tta=final.val_error_tta if final else None,
                     seconds=shown.seconds if shown else None,
                     seconds_per_step=rate, rate_from="measured" if rate else None)


def campaign_status(opts: Options, plan: tuple[Entry, ...] = PLAN, records: Path | None = None) -> CampaignStatus:
    """Every run of the plan: its state, progress, error so far and the time it still needs. A run not started is
    timed from the most recently measured run, scaled by multiply-adds where it is of another model (an estimate, said
    so). A run whose directory is not here but whose record is in ``records`` is read from there."""
    status = CampaignStatus(runs_dir=str(opts.runs_dir))
    measured = []  # (when its metrics were last written, model, seconds per step) of each measured run
    for entry in plan:
        iterations = get_budget(entry.budget).iterations
        path = run_path(entry, opts)
        if not is_finished(path) and records is not None and is_finished(record_path(entry, opts, records)):
            path = record_path(entry, opts, records)
        holder = writer(path)
        if holder:
            status.running.append({"run": path.name, "writer": holder})
        row = run_status(path, iterations, running=bool(holder))
        if row.seconds_per_step:
            measured.append(((path / METRICS).stat().st_mtime, entry.spec.model, row.seconds_per_step))
        row.model, row.budget, row.ships_as, row.why = entry.spec.model, entry.budget, entry.ships_as, entry.why
        status.runs.append(row)
    # The CPU differs from machine to machine, more than the cost of a multiply-add differs between these nets on one
    # machine: a run not started is timed from the most recently measured run, the likeliest to have run on the
    # machine the campaign runs on now, scaled by multiply-adds where it is of another model.
    _, ref, rate = max(measured, key=lambda m: m[0]) if measured else (None, None, None)
    for row in status.runs:
        if row.seconds_per_step is None and ref:
            if ref == row.model:
                row.seconds_per_step, row.rate_from = rate, f"{ref} measured"
            else:
                row.seconds_per_step, row.rate_from = rate * _macs(row.model) / _macs(ref), f"{ref} x multiply-adds"
        left = row.iterations - row.step if row.state != "done" else 0
        row.seconds_left = left * row.seconds_per_step if row.seconds_per_step is not None else None
    known = [r.seconds_left for r in status.runs if r.seconds_left is not None]
    status.seconds_left = sum(known) if len(known) == len(status.runs) else None
    return status


@lru_cache(maxsize=None)
def _macs(name: str) -> int:
    return count_macs(build_model(name), 32)


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def format_status(status: CampaignStatus) -> str:
    lines = [f"campaign in {status.runs_dir}: "
             + (f"{len(status.running)} running (" + "; ".join(r["writer"] for r in status.running) + ")"
                if status.running else "not running")]
    width = max([3] + [len(r.run) for r in status.runs])
    header = f"{'run':{width}} {'state':8} {'step':>13} {'val err %':>9} {'10-view':>7} {'s/it':>6} {'left h:mm':>9}  rate from"
    lines += [header, "-" * len(header)]
    for r in status.runs:
        err = f"{r.val_error:.2f}" if r.val_error is not None else "-"
        tta = f"{r.val_error_tta:.2f}" if r.val_error_tta is not None else "-"
        rate = f"{r.seconds_per_step:.3f}" if r.seconds_per_step else "?"
        lines.append(f"{r.run:{width}} {r.state:8} {r.step:>6}/{r.iterations:<6} {err:>9} {tta:>7} {rate:>6} "
                     f"{_hours(r.seconds_left):>9}  {r.rate_from or '-'}")
    lines.append(f"left in all: {_hours(status.seconds_left)} h:mm of one process at the rates shown (each run's "
                 "own machine); processes side by side share it out")
    return "\n".join(lines)
