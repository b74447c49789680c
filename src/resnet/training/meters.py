"""What the training loop measures between evaluations, on the device and off it: the run's wall time and training
rate (``Clock``), the training loss and error of the steps since the last evaluation (``Window``: kept on the device,
checked for divergence at each loss check with one host sync), and the progress bar."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from .distributed import Dist


class Clock:
    """The run's wall time (earlier sessions' and this one's) and the training rate between evaluations."""

    def __init__(self, seconds_before: float):
        self.seconds_before = seconds_before
        self.session_start = self.lap_start = time.perf_counter()
        self.images_per_s: float | None = None  # over the last lap; None before this session's first evaluation

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.session_start

    def lap(self, images: int) -> float:
        self.images_per_s = images / (time.perf_counter() - self.lap_start)
        return self.images_per_s

    def restart_lap(self) -> None:
        self.lap_start = time.perf_counter()


class Window:
    """Training loss and error since the last evaluation, kept on the device (no host sync per step)."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.pending: list[torch.Tensor] = []  # losses not yet checked for divergence
        self.loss_sum = torch.zeros((), device=self.device)
        self.wrong = torch.zeros((), device=self.device, dtype=torch.long)
        self.images = 0
        self.steps = 0

    def add(self, loss, logits, y):
        self.pending.append(loss.float())
        self.wrong += (logits.argmax(1) != y).sum()
        self.images += len(y)

    def first_nonfinite(self, step: int) -> int | None:
        """Check the losses since the last check (one host sync); the first non-finite one's step, or None."""
        if not self.pending:
            return None
        losses, self.pending = torch.stack(self.pending), []
        bad = ~torch.isfinite(losses)
        self.loss_sum += losses.sum()
        self.steps += len(losses)
        if bool(bad.any()):
            return step - len(losses) + int(bad.nonzero()[0]) + 1
        return None

    def all_reduce(self, d: Dist) -> None:
        if not d.enabled:
            return
        t = torch.stack([self.loss_sum.double() / d.world_size, self.wrong.double(),
                         torch.tensor(float(self.images), device=self.device, dtype=torch.float64)])
        dist.all_reduce(t)
        self.loss_sum, self.wrong, self.images = t[0].float(), t[1].long(), int(t[2])

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / max(1, self.steps)

    @property
    def error(self) -> float:
        return 100.0 * float(self.wrong) / max(1, self.images)


def progress_bar(enabled: bool, total: int, start: int, name: str):
    """The loop's progress bar (rank 0's, unless turned off), resumed at ``start``."""
    return tqdm(total=total, initial=start, disable=not enabled, desc=f"train {name}", unit="it", dynamic_ncols=True,
                smoothing=0.05)
