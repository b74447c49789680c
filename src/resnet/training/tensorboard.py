"""TensorBoard event files for a run (``resnet train --tensorboard``): the scalars of every evaluation record, written
beside ``metrics.jsonl`` in the run directory, so that ``tensorboard --logdir runs`` shows every run by its folder.

``metrics.jsonl`` stays the run's record (what ``resnet compare``, the reports and a resume read); the events are a
view of it for PyTorch users' usual tool. They need the optional ``tensorboard`` package
(``pip install 'resnet-reference[tensorboard]'``); nothing else in the package imports it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UsageError
from .metrics import Evaluation

# An evaluation record's figures (training.metrics.Evaluation) -> TensorBoard tags: one scalar each, at its step.
TAGS = {
    "train_loss": "train/loss",
    "train_error": "train/error",
    "val_error": "val/error",
    "val_top5_error": "val/top5_error",
    "val_loss": "val/loss",
    "lr": "lr",
    "images_per_s": "images_per_s",
}


def available() -> bool:
    """Whether the tensorboard package is installed (torch.utils.tensorboard needs it)."""
    return importlib.util.find_spec("tensorboard") is not None


def require() -> None:
    """A one-line error before any work when ``--tensorboard`` cannot write events here."""
    if not available():
        raise UsageError("--tensorboard needs the tensorboard package: pip install 'resnet-reference[tensorboard]'")


class TensorBoard:
    """The event writer of one training session. ``start_step``: the step it starts from (a resumed run's checkpoint,
    0 for a fresh start). Events that an earlier session wrote after that step (evaluations whose checkpoint was
    never saved) are hidden, as ``RunDir.truncate_metrics`` drops their records: TensorBoard's ``purge_step``."""

    def __init__(self, folder: str | Path, start_step: int = 0):
        require()
        # optional dependency: imported only for a run that asked for events
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1)

    def log(self, record: Evaluation) -> None:
        """One evaluation record (a line of metrics.jsonl): its scalars at its step, flushed to disk."""
        for name, tag in TAGS.items():
            value = getattr(record, name)
            if value is not None:
                self.writer.add_scalar(tag, float(value), global_step=record.step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
