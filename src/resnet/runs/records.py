"""Finished runs as checked-in records: ``RECORDS/<run>/config.json`` and ``metrics.jsonl`` (the campaign copies them
to ``results/records/`` as each run finishes), which is what the reports read once the run directories are gone with
the machines they ran on.

A record belongs to a report's budget when it trained the same model, shortcut, recipe, iterations, warm-up, batch
and data on the 45k/5k split. How often it was evaluated and in which precision it ran do not change what a report
compares (the final errors of the last weights), so records of one budget at another cadence or precision count
alike; each keeps both in its ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..training.config import TrainConfig
from ..training.metrics import read_metrics
from .spec import Options, RunSpec
from .store import Run, is_finished

# What the project's own checked-in records (results/records) trained on; a report on them says so.
CHECKED_IN_DATA = ("CIFAR-10's 50,000 training images re-encoded as JPEG quality 75 (`cifar10-train-jpeg.tar.gz`), "
                   "5,000 of them (500 per class) held out as the validation split, 45,000 trained on")


ANALYSIS = "analysis.json"  # a record's analyses of its last weights (Fig. 7, the lesion study): resnet.campaign.analyses


def read_analysis(record: Path) -> dict | None:
    """A record's ``analysis.json`` (the layer responses and lesion errors of its run's last weights), if it has one."""
    path = Path(record) / ANALYSIS
    return json.loads(path.read_text()) if path.exists() else None


def matches(config: dict, spec: RunSpec, opts: Options) -> bool:
    """Whether the run a record's ``config.json`` describes is ``spec`` (any seed) under ``opts``'s budget."""
    ran, want = TrainConfig.from_json(config.get("config") or {}), spec.train_config(opts)
    # no shortcut given means option A on the CIFAR nets: the same run
    same_shortcut = spec.plain or (ran.shortcut or "A") == (want.shortcut or "A")
    return (ran.model == want.model and same_shortcut and ran.protocol == "val"
            and all(getattr(ran, k) == getattr(want, k) for k in ("recipe", "iterations", "warmup", "batch_size",
                                                                   "data")))


def recorded_runs(spec: RunSpec, opts: Options, records: Path) -> list[Run]:
    """Every finished run of ``spec``'s model and shortcut under ``opts``'s budget in ``records``, by seed."""
    found = {}
    for path in sorted(p for p in Path(records).iterdir() if p.is_dir()) if Path(records).is_dir() else []:
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if matches(config, spec, opts) and is_finished(path):
            seed = TrainConfig.from_json(config["config"]).seed
            if seed in found:
                raise UsageError(f"{path} and {found[seed].path} both record seed {seed} of {spec.label} at "
                                 f"`{opts.budget}`; keep one")
            found[seed] = Run(RunSpec(spec.model, shortcut=spec.shortcut, seed=seed), path, read_metrics(path))
    return [found[s] for s in sorted(found)]


def record_grid(grid: dict, opts: Options, records: Path) -> dict:
    """``grid`` (key -> one spec) -> key -> the recorded runs of that spec, every seed; keys with none are left out."""
    out = {k: recorded_runs(spec, opts, records) for k, spec in grid.items()}
    return {k: runs for k, runs in out.items() if runs}
