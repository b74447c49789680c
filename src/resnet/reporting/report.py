"""What every experiment writes to its output folder: ``report.md``, ``config.json``, ``metrics.json`` (+ PNG plots).

Reports are generated, never edited: each states the split, the budget, the number of runs, its verdicts (the rule of
``verdicts.py``) and the command that regenerates it. ``opts`` below is the experiment's ``runs.spec.Options``: this
module reads its fields (``data``, ``plan``, ``seeds``, ``out_dir``) and asks it for its command and its config, so
that reporting sits below the run store and the trainer can draw its figures with ``plots.py``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..data.sources import data_source


def table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"


def protocol_lines(opts, runs: int | None = None, measured: str = "val", seeds_line: bool = True) -> list[str]:
    """The data/split, budget and run-count lines of a report. ``measured``: "val" (errors on the held-out split)
    or "train" (quantities measured on the training split only)."""
    plan = opts.plan
    split = data_source(opts.data).describe_split(measured)
    files = f": {opts.data_files}" if getattr(opts, "data_files", None) else ""
    if measured == "train":
        data = f"- Data: `{opts.data}`{files}; trained and measured on {split}."
    else:
        data = (f"- Data: `{opts.data}`{files}; errors are measured on {split}; the paper reports the official test "
                "set.")
    if files and opts.data_files.startswith("JPEG"):
        data += (" The paper trains and tests on the lossless originals; the effect of the JPEG re-encoding alone is "
                 "not measured here.")
    lines = [data, f"- Budget: `{plan.name}` -- {plan.note}."]
    if runs is not None and seeds_line:
        lines.append(f"- Runs: {runs} training run(s), {opts.seeds} seed(s) per configuration.")
    return lines


def run_summary(label: str, val_error: float | None, curves: list | None = None) -> tuple:
    """(label, final validation error, training loss over the first evaluation interval) of one run, for
    ``near_chance_notes``; read from a report's metrics, so that a re-rendered report says the same."""
    first = curves[0]["train_loss"] if curves and "train_loss" in curves[0] else None
    return label, val_error, first


def near_chance_notes(runs: list[tuple]) -> list[str]:
    """A line for each run (``run_summary``) that ended close to chance (10 classes: 90% error): such a run never
    started converging within its budget, and its numbers describe that, not the architecture."""
    notes = []
    for label, e, first in runs:
        if e is not None and e >= 80.0:
            loss = f"training loss {first:.2f} over its first evaluation interval, " if first is not None else ""
            notes.append(f"- {label} ended near chance ({e:.2f}% validation error; chance is 90%): it did not "
                         f"start converging within this budget ({loss}ln 10 = 2.30 is chance). Its numbers describe a "
                         "failed start at lr 0.1, not the architecture; the paper warms up at lr 0.01 only for "
                         "ResNet-110/1202 (Sec. 4.2).")
    return notes


def write_outputs(opts, title: str, body: list[str], metrics: dict, extra_config: dict | None = None,
                  plots: list[Path] | None = None) -> Path:
    """Write report.md, config.json and metrics.json. Returns the report's path (the command line prints it)."""
    out = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    config = dict(opts.to_dict(), **(extra_config or {}))
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default) + "\n")
    footer = [f"Written by `resnet reproduce` (code {config['code_version']}); config in `config.json`, raw numbers "
              "in `metrics.json`. "
              + ("Built from the recorded runs alone: nothing was trained, and the command is cheap to re-run."
                 if getattr(opts, "records", None) else
                 "Finished runs are reused and unfinished ones resumed, so the command is cheap to re-run.")]
    return write_report(out, title, body, plots or [], [opts.command()], footer)


def write_report(out: Path, title: str, body: list[str], plots: list[Path], commands: list[str],
                 footer: list[str]) -> Path:
    """``out/report.md``: the title, the body, the figures, the commands that regenerate it and the footer. Returns its
    path."""
    lines = [f"# {title}", "", *body, ""]
    if plots:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## Regenerate", "", "```", *commands, "```", "", *footer, ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return out / "report.md"


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(type(o))
