"""The training campaign: the long CIFAR-10 runs behind the shipped weights, Table 6, Fig. 6 and Fig. 7, trained
across sessions of a machine that is not always on.

Most of these runs are longer than a working session (ResNet-110 at 32k iterations is most of a day on one CPU
core), so the campaign is a fixed, ordered plan (``plan.py``) of shared runs (``resnet.runs``): ``resnet campaign``
trains the first run that is neither finished nor being trained by another process, resuming it exactly from its
checkpoint, then the next. Several processes share one plan, one per core (``--threads 1`` each): each run has
one writer, its lock. SIGTERM or Ctrl-C saves a checkpoint and stops; the same command goes on where it stopped. Each
finished run's record (``config.json``, ``metrics.jsonl``) is copied to ``results/records/<run>/``, where the reports
read it and where the campaign finds it finished on any machine, with the analyses of its last weights
(``analysis.json``: Fig. 7's layer responses, the lesion errors; ``analyses.py``). ``resnet runs`` (``status.py``) shows what is done, running and left.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..files import atomic_write_bytes
from ..runs.budgets import get_budget
from ..runs.spec import Options
from ..runs.store import RunStopped, ensure_run, is_finished
from ..training.metrics import read_metrics
from ..training.run_dir import writer
from ..weights.format import load_weights, save_weights
from .analyses import ANALYSIS, write_analysis
from .plan import PLAN, Entry, entry_options, is_done, run_path

logger = logging.getLogger("resnet.campaign")  # the campaign's lines ("[campaign] ..."), shown as they are


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


def run_campaign(opts: Options, plan: tuple[Entry, ...] = PLAN, log: Callable[[str], None] = logger.info,
                 records: Path | None = None) -> CampaignResult:
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
            record = save_record(path, records)
            log(f"[campaign] {path.name} finished; its record is in {record}")
            write_analysis(record, load_weights(path / "last"), entry_options(entry, opts))
            log(f"[campaign] {path.name}: its layer responses (and lesion errors) in {record / ANALYSIS}")
    done = _finished(plan, opts, records)
    if busy:
        log(f"[campaign] {done} of {len(plan)} runs are finished; the other {busy} are being trained by other processes")
    else:
        log(f"[campaign] all {len(plan)} runs are finished in {opts.runs_dir}")
    return CampaignResult(done, len(plan))


def _finished(plan: tuple[Entry, ...], opts: Options, records: Path | None) -> int:
    return sum(is_done(entry, opts, records) for entry in plan)


def ship(entry: Entry, opts: Options, dest: Path) -> Path:
    """Copy a finished run's *last* weights (not the best on validation: the validation error stays an unbiased
    estimate) to ``dest/<entry.ships_as>`` (``.safetensors`` and ``.json``), with the recipe, budget, seed, run and
    code version and its errors (single image and the recipe's test protocol) in the metadata. ``dest`` is the
    caller's: the library never writes into an installed package (a checkout that ships the weights names its own
    ``src/resnet/weights/pretrained``)."""
    path = run_path(entry, opts)
    if not entry.ships_as:
        raise UsageError(f"{path.name} is not a run the plan ships")
    if not is_finished(path):
        raise UsageError(f"{path} has not finished; `resnet runs` shows what it still needs")
    final = read_metrics(path).final
    weights = load_weights(path / "last")
    config = json.loads((path / "config.json").read_text())
    # The run's evaluation interval, not the recipe's default: evaluating never changes the weights, but the
    # metadata says how the run went (its curves have one point per evaluation).
    recipe = dict(weights.meta.get("recipe", {}), evaluations=math.ceil(final.step / config["eval_every"]))
    meta = dict(weights.meta, recipe=recipe, shipped_as=entry.ships_as, budget=entry.budget, seed=entry.spec.seed,
                run=path.name,
                code_version=config.get("code_version"), iterations=final.step, seconds=final.seconds,
                accuracy=dict(weights.meta.get("accuracy", {}), top1_error=final.val_error,
                              top5_error=final.val_top5_error, split=final.eval_split,
                              images=config.get("data", {}).get("eval_images"),
                              tta=final.tta, top1_error_tta=final.val_error_tta))
    return save_weights(dest / entry.ships_as, weights.model, weights.normalization, meta)


def ship_finished(opts: Options, dest: Path, plan: tuple[Entry, ...] = PLAN,
                  log: Callable[[str], None] = logger.info) -> list[Path]:
    """Ship every finished run of the plan that has a name to ship as into ``dest``; the others are listed as not
    ready."""
    shipped = []
    for entry in plan:
        if entry.ships_as and is_finished(run_path(entry, opts)):
            shipped.append(ship(entry, opts, dest))
            log(f"[campaign] shipped {run_path(entry, opts).name} as {entry.ships_as} ({shipped[-1]})")
        elif entry.ships_as:
            log(f"[campaign] {entry.ships_as}: its run {run_path(entry, opts).name} has not finished")
    return shipped
