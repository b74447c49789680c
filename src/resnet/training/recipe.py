"""What a training recipe is: its optimiser settings, its learning-rate schedule and its evaluation cadence, as data.

The schedule is a pure function of the step, so a resumed run needs only the step to continue exactly (the plateau
schedule also keeps a little state). The named recipes are in ``recipes.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


# The most evaluations a run makes by default: the points of its error curve. With one epoch as the shortest interval,
# an evaluation of the held-out set (a forward pass, no backward) costs a few percent of the training between two.
MAX_EVALUATIONS = 10


@dataclass(frozen=True)
class Recipe:
    name: str
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    batch_size: int = 128
    iterations: int = 64_000
    schedule: str = "step"  # "step": /10 at milestones; "plateau": /10 when val error stops improving; "onecycle"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `iterations` (32k and 48k of 64k, Sec. 4.2)
    gamma: float = 0.1
    # Sec. 4.2: 0.01 for ResNet-110/1202 until training error < 80% (~400 its). With warmup_lr None, a linear ramp
    # from lr/warmup_iterations up to lr (Goyal et al. 2017): measured here, ResNet-56 at lr 0.1 from step 0 blows up
    # (loss 3.2 -> 12 in 5 steps) and dies at chance, while a 100-iteration linear ramp trains (loss 1.6 at step 140).
    warmup_lr: float | None = None
    warmup_iterations: int = 0
    label_smoothing: float = 0.0
    plateau_patience: int = 5  # evaluations without improvement before /10 (ImageNet, "when the error plateaus")
    # The test protocol of the run's final evaluation, besides the single image (resnet.data.sources.CIFAR_PROTOCOLS).
    tta: str = "center"
    # Evaluations over the run (None: the default cadence, ``eval_every``). Each costs a pass over the held-out images
    # and a checkpoint.
    evaluations: int | None = None
    note: str = ""

    def lr_at(self, step: int, plateau_drops: int = 0) -> float:
        if step < self.warmup_iterations:
            return self.warmup_lr if self.warmup_lr is not None else self.lr * (step + 1) / self.warmup_iterations
        if self.schedule == "step":
            drops = sum(step >= round(m * self.iterations) for m in self.milestones)
            return self.lr * self.gamma ** drops
        if self.schedule == "plateau":
            return self.lr * self.gamma ** plateau_drops
        if self.schedule == "onecycle":  # linear warm-up over the first 15%, then cosine-free linear decay to zero
            peak = 0.15 * self.iterations
            if step < peak:
                return self.lr * (0.1 + 0.9 * step / peak)
            return self.lr * max(0.0, (self.iterations - step) / (self.iterations - peak))
        raise ValueError(self.schedule)

    def eval_every(self, steps_per_epoch: int) -> int:
        """Iterations between evaluations (and checkpoints) by default: the recipe's ``evaluations`` if it sets them;
        one per epoch for the plateau schedule, whose patience counts evaluations (Sec. 3.4: "when the error
        plateaus"); otherwise at most ``MAX_EVALUATIONS`` per run and at least an epoch apart, so that evaluating
        never costs more than a small part of a run, however short (a run shorter than an epoch evaluates once, at
        its end)."""
        if self.evaluations:
            return math.ceil(self.iterations / self.evaluations)
        if self.schedule == "plateau":
            return steps_per_epoch
        return max(math.ceil(self.iterations / MAX_EVALUATIONS), steps_per_epoch)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d
