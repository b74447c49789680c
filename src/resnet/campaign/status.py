"""``resnet runs``: what the campaign has done, is running and has left, and the time each run still needs at the rate
it was measured at (a run not started: from a measured run of the same model, else scaled by multiply-adds)."""

from __future__ import annotations

from pathlib import Path

from ..models import build_model
from ..models.summary import count_macs
from ..runs.budgets import get_budget
from ..runs.spec import Options
from ..runs.store import is_finished
from ..training.run_dir import read_metrics, writer
from .plan import PLAN, Entry, record_path, run_path


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
