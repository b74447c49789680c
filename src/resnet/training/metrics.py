"""A run's records, ``metrics.jsonl``: one JSON line per evaluation (``Evaluation``) and one at the end of the run
(``Final``), written by the trainer and read by everything that reports on a run (``resnet compare``, ``resnet runs``,
the campaign, the reports). This module is the one place that knows the lines' keys.

The lines on disk keep their keys and order; a line written by an earlier version (fewer keys, another order) is
read with the missing figures as None. A line cut short by a crash mid-write is skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

METRICS = "metrics.jsonl"


def _known(cls, line: dict) -> dict:
    """The keys of ``line`` that are fields of ``cls`` (a line of another version may carry others)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in line.items() if k in names}


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the held-out split along the run: the training figures since the previous one (the loss and
    error of the augmented batches), the held-out figures, the learning rate, the rate and the run's wall time."""
    step: int
    epoch: float | None = None
    lr: float | None = None
    train_loss: float | None = None
    train_error: float | None = None
    val_error: float | None = None
    val_top5_error: float | None = None
    val_loss: float | None = None
    images_per_s: float | None = None  # over the interval since the previous evaluation
    seconds: float | None = None  # the run's wall time so far, over every session

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Final:
    """The end of a run: the last weights' held-out errors, the best evaluation's, and those under the recipe's own
    test protocol (``tta``, beyond the paper) where it has one."""
    step: int
    val_error: float | None = None
    best_val_error: float | None = None
    val_top5_error: float | None = None
    eval_split: str | None = None
    images_per_s: float | None = None  # over the last evaluation interval of the last session
    model: str | None = None
    tta: str | None = None
    val_error_tta: float | None = None
    val_top5_error_tta: float | None = None
    seconds: float | None = None

    def to_json(self) -> dict:
        """The line as the trainer writes it (the recipe's test protocol only where there is one)."""
        line = {"final": True, "step": self.step, "best_val_error": self.best_val_error, "val_error": self.val_error,
                "val_top5_error": self.val_top5_error, "eval_split": self.eval_split,
                "images_per_s": self.images_per_s, "model": self.model}
        if self.tta is not None:
            line.update(tta=self.tta, val_error_tta=self.val_error_tta, val_top5_error_tta=self.val_top5_error_tta)
        line["seconds"] = self.seconds
        return line


def parse(line: dict) -> Evaluation | Final:
    """One decoded line of metrics.jsonl as its record."""
    if line.get("final"):
        return Final(**_known(Final, line))
    return Evaluation(**_known(Evaluation, line))


def dumps(record: Evaluation | Final) -> str:
    """The record as its line of metrics.jsonl (newline included)."""
    return json.dumps(record.to_json()) + "\n"


@dataclass(frozen=True)
class Metrics:
    """A run's ``metrics.jsonl``, read: its evaluations in order, and its final record once it has finished."""
    evaluations: tuple[Evaluation, ...] = ()
    final: Final | None = None

    @property
    def finished(self) -> bool:
        return self.final is not None

    @property
    def last(self) -> Evaluation | None:
        return self.evaluations[-1] if self.evaluations else None

    @property
    def step(self) -> int:
        """How far the run has got by its records: the final step, else the last evaluation's; 0 for none."""
        if self.final is not None:
            return self.final.step
        return self.last.step if self.last else 0

    @property
    def seconds(self) -> float | None:
        """The run's wall time by its last record."""
        return self.final.seconds if self.final is not None else (self.last.seconds if self.last else None)

    @property
    def curve(self) -> tuple[Evaluation, ...]:
        """The evaluations that carry training and held-out errors: the points of an error curve."""
        return tuple(e for e in self.evaluations if e.val_error is not None and e.train_error is not None)


def lines(path: str | Path) -> list[tuple[str, Evaluation | Final]]:
    """Each readable line of a metrics file, as written and as its record."""
    found = []
    for text in Path(path).read_text().splitlines():
        text = text.strip()
        if text:
            try:
                found.append((text, parse(json.loads(text))))
            except (json.JSONDecodeError, TypeError, AttributeError):  # a line cut by a crash mid-write
                continue
    return found


def read_metrics(path: str | Path) -> Metrics:
    """The records of a run directory (or of a metrics file); none for a run that has not evaluated yet."""
    path = Path(path)
    if path.suffix != ".jsonl":
        path = path / METRICS
    if not path.exists():
        return Metrics()
    records = [r for _, r in lines(path)]
    finals = [r for r in records if isinstance(r, Final)]
    return Metrics(tuple(r for r in records if isinstance(r, Evaluation)), finals[-1] if finals else None)
