"""The training campaign: the long CIFAR-10 runs behind the shipped weights, Table 6, Fig. 6 and Fig. 7, trained
across sessions of a machine that is not always on.

Most of these runs are longer than a working session (ResNet-110 at 32k iterations is most of a day on one CPU
core), so the campaign is a fixed, ordered plan of shared runs (``runs.py``): ``resnet campaign`` trains the first
run that is neither finished nor being trained by another process, resuming it exactly from its checkpoint, then the
next. Several processes share one plan, one per core (``--threads 1`` each): each run has one writer, its lock.
SIGTERM or Ctrl-C saves a checkpoint and stops; the same command goes on where it stopped. Each finished run's record
(``config.json``, ``metrics.jsonl``) is copied to ``results/records/<run>/``, where the reports read it and where the
campaign finds it finished on any machine. ``resnet runs`` shows what is done, running and left, and the time each
run still needs at the rate it was measured at.

The order is the order of value: the runs behind Fig. 6's degradation and the shipped nets first, then the second
seeds every verdict needs, then what only adds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UsageError
from ..models import build_model
from ..models.summary import count_macs
from ..files import atomic_write_bytes
from ..training.run_dir import read_metrics, writer
from ..weights.format import load_weights, save_weights
from ..weights.pretrained import PRETRAINED_DIR
from . import runs
from .budgets import get_budget
from .runs import Options, RunSpec, RunStopped, ensure_run, is_finished

DEFAULT_RUNS = Path("campaign") / "runs"  # inside the checkout, git-ignored: the next session finds it
DEFAULT_RECORDS = Path("results") / "records"  # each finished run's config.json and metrics.jsonl, checked in


@dataclass(frozen=True)
class Entry:
    spec: RunSpec
    budget: str  # a name in budgets.BUDGETS: its iterations and recipe
    why: str
    ships_as: str | None = None  # the name of the shipped weights this run may become
    evaluations: int | None = None  # instead of the budget's


def _at(budget: str, model: str, why: str, seed: int = 0, shortcut: str | None = None, ships: bool = False,
        evaluations: int | None = None) -> Entry:
    return Entry(RunSpec(model, shortcut=shortcut, seed=seed), budget, why,
                 ships_as=f"{model}-cifar10" if ships else None, evaluations=evaluations)


# The campaign's first runs, finished (their records are in results/records/): the paper's own recipe at its budget, and
# ResNet-20/56 at fast-32k, which evaluated every 2,000 iterations then.
FIRST = (
    Entry(RunSpec("resnet20"), "paper", "Sec. 4.2 exactly, 64k iterations: the anchor for this data",
          ships_as="resnet20-cifar10-paper"),
    _at("fast-32k", "resnet56", "the shipped ResNet-56", ships=True, evaluations=16),
    _at("fast-32k", "resnet20", "ResNet-20 for Table 6 beside ResNet-56", ships=True, evaluations=16),
    _at("fast-32k", "resnet20", "a second seed of ResNet-20: the seed-to-seed spread", seed=1, evaluations=16),
)
# Table 6, Fig. 6 and Fig. 7 at one real budget, in the order of their value: the degradation pair first (plain-20
# and plain-56: Fig. 6's claim and the weights no other project ships), then the deepest ResNet, the missing depths,
# the second seeds every verdict needs (a spread measured for the nets compared), the rest of Fig. 6's plain nets.
TABLE6 = (
    _at("fast-32k", "plain20", "Fig. 6: the shallow plain net", ships=True),
    _at("fast-32k", "plain56", "Fig. 6: the deep plain net (the degradation problem)", ships=True),
    _at("fast-32k", "resnet110", "Table 6's deepest ResNet", ships=True),
    _at("fast-32k", "resnet32", "Table 6", ships=True),
    _at("fast-32k", "resnet44", "Table 6", ships=True),
    _at("fast-32k", "resnet56", "a second seed of ResNet-56: its spread", seed=1),
    _at("fast-32k", "plain20", "a second seed of plain-20: its spread", seed=1),
    _at("fast-32k", "plain56", "a second seed of plain-56: its spread", seed=1),
    _at("fast-32k", "plain32", "Fig. 6"),
    _at("fast-32k", "plain44", "Fig. 6"),
    _at("fast-32k", "resnet110", "a second seed of ResNet-110: its spread", seed=1),
)
# If time allows: plain-110 (the paper's stays above 60%), Table 3 at CIFAR scale, third seeds.
EXTRA = (
    _at("fast-32k", "plain110", "Sec. 4.2: plain-110"),
    _at("fast-32k", "resnet20", "Table 3 at CIFAR scale: option B", shortcut="B"),
    _at("fast-32k", "resnet20", "Table 3 at CIFAR scale: option C", shortcut="C"),
    _at("fast-32k", "resnet20", "a third seed of ResNet-20", seed=2),
    _at("fast-32k", "resnet56", "a third seed of ResNet-56", seed=2),
)
PLAN: tuple[Entry, ...] = FIRST + TABLE6 + EXTRA


def entry_options(entry: Entry, opts: Options) -> Options:
    return replace(opts, budget=entry.budget, evaluations=entry.evaluations)


def run_path(entry: Entry, opts: Options) -> Path:
    """The entry's run directory. A campaign outlives machines, and the CPU differs from session to session: a run
    started in bf16 (where the CPU runs it natively) continues in fp32 on a CPU without it, and the reverse, rather
    than starting over (an emulated bf16 step would be hundreds of times slower). Its directory keeps the key of the
    precision it started in; each session's runtime is in its config.json and the campaign's log."""
    eopts = entry_options(entry, opts)
    here = runs.run_path(entry.spec, eopts, log=_quiet)
    if here.exists():
        return here
    for precision in ("bf16", "fp32"):
        there = runs.run_path(entry.spec, replace(eopts, precision=precision), log=_quiet)
        if there.exists():
            return there
    return here


def _quiet(message: str) -> None:
    pass


def is_done(entry: Entry, opts: Options, records: Path | None) -> bool:
    """Finished here (its run directory ends with the final record) or anywhere (its record is checked in)."""
    if is_finished(run_path(entry, opts)):
        return True
    return records is not None and is_finished(record_path(entry, opts, records))


def record_path(entry: Entry, opts: Options, records: Path) -> Path:
    """Where the entry's checked-in record is (``RECORDS/<run name>``), whichever precision it ran in."""
    eopts = entry_options(entry, opts)
    for precision in (opts.resolved_precision, "bf16", "fp32"):
        path = records / runs.run_path(entry.spec, replace(eopts, precision=precision), log=_quiet).name
        if path.exists():
            return path
    return records / run_path(entry, opts).name


def save_record(path: Path, records: Path) -> Path:
    """Copy a finished run's record (``config.json`` and ``metrics.jsonl``, a few KB) to ``RECORDS/<run name>``: what
    every report re-renders from, in the repository, when the run directory is long gone with its machine."""
    dest = records / path.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.jsonl"):
        atomic_write_bytes(dest / name, (path / name).read_bytes())
    return dest


@dataclass(frozen=True)
class CampaignResult:
    """What ``run_campaign`` did: how many of the plan's runs are finished, and the run a signal stopped (its
    checkpoint saved; the same call resumes it), if one did."""

    finished: int
    runs: int
    stopped: RunStopped | None = None


def run_campaign(opts: Options, plan: tuple[Entry, ...] = PLAN, log=print, records: Path | None = None) -> CampaignResult:
    """Train the plan's runs in order: the first that is neither finished nor being trained by another campaign
    process (each run has one writer, its lock), resuming it exactly; then the next. Several processes can share one
    plan, one per core. ``records``: where each finished run's record is copied (and found: a run whose record is
    there is finished, wherever it ran)."""
    for entry in plan:
        get_budget(entry.budget)
    busy = 0
    for i, entry in enumerate(plan, 1):
        path = run_path(entry, opts)
        if is_done(entry, opts, records):
            continue
        holder = writer(path)
        if holder:
            busy += 1
            log(f"[campaign] run {i}/{len(plan)}: {path.name} is being trained by {holder}; taking the next")
            continue
        log(f"[campaign] run {i}/{len(plan)}: {entry.spec.label}, budget {entry.budget} ({entry.why})")
        try:
            ensure_run(entry.spec, entry_options(entry, opts), log, path=path)
        except RunStopped as stop:
            log(f"[campaign] stopped: {stop.path.name} saved at step {stop.step}; the same command resumes it")
            return CampaignResult(_finished(plan, opts, records), len(plan), stop)
        except UsageError as e:
            if not writer(path):
                raise
            busy += 1  # another process took the run between the look and the lock
            log(f"[campaign] {path.name}: {e}; taking the next")
            continue
        if records is not None:
            log(f"[campaign] {path.name} finished; its record is in {save_record(path, records)}")
    done = _finished(plan, opts, records)
    if busy:
        log(f"[campaign] {done} of {len(plan)} runs are finished; the other {busy} are being trained by other processes")
    else:
        log(f"[campaign] all {len(plan)} runs are finished in {opts.runs_dir}")
    return CampaignResult(done, len(plan))


def _finished(plan: tuple[Entry, ...], opts: Options, records: Path | None) -> int:
    return sum(is_done(entry, opts, records) for entry in plan)


def ship(entry: Entry, opts: Options, dest: Path = PRETRAINED_DIR) -> Path:
    """Copy a finished run's *last* weights (not the best on validation: the validation error stays an unbiased
    estimate) into the package's shipped weights as ``entry.ships_as``, with the recipe, budget, seed, run and code
    version and its errors (single image and the recipe's test protocol) in the metadata."""
    path = run_path(entry, opts)
    if not entry.ships_as:
        raise UsageError(f"{path.name} is not a run the plan ships")
    if not is_finished(path):
        raise UsageError(f"{path} has not finished; `resnet runs` shows what it still needs")
    final = next(r for r in read_metrics(path) if r.get("final"))
    weights = load_weights(path / "last")
    config = json.loads((path / "config.json").read_text())
    meta = dict(weights.meta, shipped_as=entry.ships_as, budget=entry.budget, seed=entry.spec.seed, run=path.name,
                code_version=config.get("code_version"), iterations=final["step"], seconds=final.get("seconds"),
                accuracy=dict(weights.meta.get("accuracy", {}), top1_error=final["val_error"],
                              top5_error=final["val_top5_error"], split=final["eval_split"],
                              images=config.get("data", {}).get("eval_images"),
                              tta=final.get("tta"), top1_error_tta=final.get("val_error_tta")))
    return save_weights(dest / entry.ships_as, weights.model, weights.normalization, meta)


# ---- the view: what is done, running and left --------------------------------------------------------------------

def _seconds_per_step(metrics: list[dict], last: int = 5) -> float | None:
    """Wall seconds per iteration over the last evaluations (training, evaluation and checkpoints together), as this
    run was measured on the machine it last ran on."""
    evals = [r for r in metrics if "step" in r and "seconds" in r and not r.get("final")]
    if len(evals) < 2:
        return evals[0]["seconds"] / evals[0]["step"] if evals and evals[0]["step"] else None
    a, b = evals[max(0, len(evals) - 1 - last)], evals[-1]
    return (b["seconds"] - a["seconds"]) / (b["step"] - a["step"]) if b["step"] > a["step"] else None


def run_status(path: Path, iterations: int, running: bool) -> dict:
    metrics = read_metrics(path) if (path / "metrics.jsonl").exists() else []
    evals = [r for r in metrics if "val_error" in r and not r.get("final")]
    final = next((r for r in metrics if r.get("final")), None)
    step = final["step"] if final else (evals[-1]["step"] if evals else 0)
    rate = _seconds_per_step(metrics)
    if final:
        state = "done"
    elif running:
        state = "running"
    elif step or (path / "checkpoint.pt").exists():
        state = "stopped"
    else:
        state = "waiting"
    out = {"run": path.name, "state": state, "step": step, "iterations": iterations,
           "val_error": (final or (evals[-1] if evals else {})).get("val_error"),
           "val_error_tta": final.get("val_error_tta") if final else None,
           "seconds": (final or (evals[-1] if evals else {})).get("seconds"),
           "seconds_per_step": rate, "rate_from": "measured" if rate else None}
    return out


def ship_finished(opts: Options, plan: tuple[Entry, ...] = PLAN, log=print) -> list[Path]:
    """Ship every finished run of the plan that has a name to ship as; the others are listed as not ready."""
    shipped = []
    for entry in plan:
        if entry.ships_as and is_finished(run_path(entry, opts)):
            shipped.append(ship(entry, opts))
            log(f"[campaign] shipped {run_path(entry, opts).name} as {entry.ships_as} ({shipped[-1]})")
        elif entry.ships_as:
            log(f"[campaign] {entry.ships_as}: its run {run_path(entry, opts).name} has not finished")
    return shipped


def campaign_status(opts: Options, plan: tuple[Entry, ...] = PLAN, records: Path | None = None) -> dict:
    """Every run of the plan: its state, progress, error so far and the time it still needs. A run not started is
    timed from a measured run of the same model, else from the nearest measured model scaled by multiply-adds (an
    estimate, said so). A run whose directory is not here but whose record is in ``records`` is read from there."""
    rows, running = [], []
    for entry in plan:
        iterations = get_budget(entry.budget).iterations
        path = run_path(entry, opts)
        if not is_finished(path) and records is not None and is_finished(record_path(entry, opts, records)):
            path = record_path(entry, opts, records)
        holder = writer(path)
        if holder:
            running.append({"run": path.name, "writer": holder})
        row = run_status(path, iterations, running=bool(holder))
        row.update(model=entry.spec.model, budget=entry.budget, ships_as=entry.ships_as, why=entry.why)
        rows.append(row)
    measured = {r["model"]: r["seconds_per_step"] for r in rows if r["seconds_per_step"]}
    for row in rows:
        if row["seconds_per_step"] is None and measured:
            if row["model"] in measured:
                row["seconds_per_step"], row["rate_from"] = measured[row["model"]], f"{row['model']} measured"
            else:
                ref = next(iter(measured))
                scale = _macs(row["model"]) / _macs(ref)
                row["seconds_per_step"], row["rate_from"] = measured[ref] * scale, f"{ref} x multiply-adds"
        left = row["iterations"] - row["step"] if row["state"] != "done" else 0
        row["seconds_left"] = left * row["seconds_per_step"] if row["seconds_per_step"] is not None else None
    known = [r["seconds_left"] for r in rows if r["seconds_left"] is not None]
    return {"runs_dir": str(opts.runs_dir), "running": running, "runs": rows,
            "seconds_left": sum(known) if len(known) == len(rows) else None}


def _macs(name: str) -> int:
    return count_macs(build_model(name), 32)


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def format_status(status: dict) -> str:
    lines = [f"campaign in {status['runs_dir']}: "
             + (f"{len(status['running'])} running (" + "; ".join(r["writer"] for r in status["running"]) + ")"
                if status["running"] else "not running")]
    width = max([3] + [len(r["run"]) for r in status["runs"]])
    header = f"{'run':{width}} {'state':8} {'step':>13} {'val err %':>9} {'10-view':>7} {'s/it':>6} {'left h:mm':>9}  rate from"
    lines += [header, "-" * len(header)]
    for r in status["runs"]:
        err = f"{r['val_error']:.2f}" if r["val_error"] is not None else "-"
        tta = f"{r['val_error_tta']:.2f}" if r["val_error_tta"] is not None else "-"
        rate = f"{r['seconds_per_step']:.3f}" if r["seconds_per_step"] else "?"
        lines.append(f"{r['run']:{width}} {r['state']:8} {r['step']:>6}/{r['iterations']:<6} {err:>9} {tta:>7} {rate:>6} "
                     f"{_hours(r['seconds_left']):>9}  {r['rate_from'] or '-'}")
    lines.append(f"left in all: {_hours(status['seconds_left'])} h:mm of one process at the rates shown (each run's "
                 "own machine); processes side by side share it out")
    return "\n".join(lines)
