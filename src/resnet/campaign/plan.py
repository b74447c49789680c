"""The campaign's plan: the long CIFAR-10 runs behind the shipped weights, Table 6, Fig. 6 and Fig. 7, in the order of
their value, and where each of them lives (its run directory, and its record once it has finished).

The order is the order of value, shortest first where a run would otherwise risk being lost with its machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..runs import store
from ..runs.spec import Options, RunSpec
from ..runs.store import is_finished

DEFAULT_RUNS = Path("campaign") / "runs"  # inside the checkout, git-ignored: the next session finds it
DEFAULT_RECORDS = Path("results") / "records"  # each finished run's config.json and metrics.jsonl, checked in


@dataclass(frozen=True)
class Entry:
    spec: RunSpec
    budget: str  # a name in runs.budgets.BUDGETS: its iterations and recipe
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
# Table 6, Fig. 6 and Fig. 7 at one real budget. A run folder lives on one machine, and a machine can be lost between
# sessions, so the runs that finish within a few hours come first (each session then ends with finished records), the
# longest last: plain-20 (Fig. 6's shallow plain net, weights no other project ships), ResNet-32, the second seed of
# plain-20 (its spread), plain-32, ResNet-44, then the degradation's deep plain net and the second seeds its verdict
# and Table 6's need, plain-44 (a curve of Fig. 6 that no verdict rests on), and Table 6's deepest ResNet (estimated at
# about 14 hours a seed on one Zen 4 core, from plain-32's measured rate scaled by multiply-adds).
TABLE6 = (
    _at("fast-32k", "plain20", "Fig. 6: the shallow plain net", ships=True),
    _at("fast-32k", "resnet32", "Table 6", ships=True),
    _at("fast-32k", "plain20", "a second seed of plain-20: its spread", seed=1),
    _at("fast-32k", "plain32", "Fig. 6"),
    _at("fast-32k", "resnet44", "Table 6", ships=True),
    _at("fast-32k", "plain56", "Fig. 6: the deep plain net (the degradation problem)", ships=True),
    _at("fast-32k", "resnet56", "a second seed of ResNet-56: its spread", seed=1),
    _at("fast-32k", "plain56", "a second seed of plain-56: its spread", seed=1),
    _at("fast-32k", "plain44", "Fig. 6"),
    _at("fast-32k", "resnet110", "Table 6's deepest ResNet", ships=True),
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
    here = store.run_path(entry.spec, eopts, log=_quiet)
    if here.exists():
        return here
    for precision in ("bf16", "fp32"):
        there = store.run_path(entry.spec, replace(eopts, precision=precision), log=_quiet)
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
    """Where the entry's checked-in record is (``RECORDS/<run name>``), whichever precision it ran in: a record is
    found by its run's key alone (the runs folder of this machine has nothing to say about it)."""
    eopts = entry_options(entry, opts)
    names = [entry.spec.key(replace(eopts, precision=p)) for p in (opts.resolved_precision, "bf16", "fp32")]
    return next((records / n for n in names if (records / n).exists()), records / names[0])
