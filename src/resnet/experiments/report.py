"""What every experiment writes to its output folder: ``report.md``, ``config.json``, ``metrics.json`` (+ PNG plots).

Reports are generated, never edited: each states the split, the budget, the number of runs and the command that
regenerates it.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .runs import Options


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


def protocol_lines(opts: Options, runs: int | None = None, measured: str = "val") -> list[str]:
    """The data/split, budget and run-count lines of a report. ``measured``: "val" (errors on the held-out split)
    or "train" (quantities measured on the training split only)."""
    plan = opts.plan
    if measured == "train":
        split = ("the 45k training split (the 5k validation images are held out, Sec. 4.2)" if opts.data == "cifar10"
                 else f"the training split of the {opts.data!r} data")
        data = f"- Data: `{opts.data}`; trained and measured on {split}."
    else:
        split = ("the held-out validation split (45k train / 5k val of CIFAR-10's training images, Sec. 4.2)"
                 if opts.data == "cifar10" else f"the validation split of the {opts.data!r} data")
        data = f"- Data: `{opts.data}`; errors are measured on {split}; the paper reports the official test set."
    lines = [data, f"- Budget: `{plan.name}` -- {plan.note}."]
    if runs is not None:
        lines.append(f"- Runs: {runs} training run(s), {opts.seeds} seed(s) per configuration.")
    return lines


def near_chance_notes(runs) -> list[str]:
    """A line for each run that ended close to chance (10 classes: 90% error): such a run never started converging
    within its budget, and its numbers describe that, not the architecture."""
    notes = []
    for r in runs:
        e = r.final_val_error
        if e >= 80.0:
            first = r.curve[0]["train_loss"] if r.curve else float("nan")
            notes.append(f"- {r.spec.label} ended near chance ({e:.2f}% validation error; chance is 90%): it did not "
                         f"start converging within this budget (training loss {first:.2f} over its first evaluation "
                         "interval, ln 10 = 2.30 is chance). Its numbers describe a failed start at lr 0.1, not the "
                         "architecture; the paper warms up at lr 0.01 only for ResNet-110/1202 (Sec. 4.2).")
    return notes


def write_outputs(opts: Options, title: str, body: list[str], metrics: dict, extra_config: dict | None = None,
                  plots: list[Path] | None = None) -> Path:
    """Write report.md, config.json and metrics.json; print the report. Returns the report's path."""
    out = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    config = dict(opts.to_dict(), **(extra_config or {}))
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default) + "\n")
    lines = [f"# {title}", "", *body, ""]
    if plots:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## Regenerate", "", "```", opts.command(), "```", "",
              f"Written by `resnet reproduce` (code {config['code_version']}); config in `config.json`, raw numbers in "
              "`metrics.json`. Finished runs are reused and unfinished ones resumed, so the command is cheap to "
              "re-run.", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    print(text)
    return out / "report.md"


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(type(o))
