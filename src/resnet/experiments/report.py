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


def protocol_lines(opts: Options, runs: int | None = None) -> list[str]:
    plan = opts.plan
    split = ("the held-out validation split (45k train / 5k val of CIFAR-10's training images, Sec. 4.2)"
             if opts.data == "cifar10" else f"the validation split of the {opts.data!r} data")
    lines = [f"- Data: `{opts.data}`; errors are measured on {split}; the paper reports the official test set.",
             f"- Budget: `{plan.name}` -- {plan.note}."]
    if runs is not None:
        lines.append(f"- Runs: {runs} training run(s), {opts.seeds} seed(s) per configuration.")
    return lines


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
