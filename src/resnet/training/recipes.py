"""Training recipes: the paper's (Sec. 3.4 for ImageNet, Sec. 4.2 for CIFAR) and named alternatives.

A recipe owns its optimiser settings and its learning-rate schedule. The schedule is a pure function of the step,
so a resumed run needs only the step to continue exactly (the plateau schedule also keeps a little state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace, asdict

from ..errors import UsageError, choices


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
    # The test protocol of the run's final evaluation, besides the single image (resnet.evaluation.evaluate.CIFAR_TTA).
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


# Sec. 4.2: SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 /10 at 32k and 48k, stop at 64k.
CIFAR_PAPER = Recipe("paper", note="He et al. Sec. 4.2 (CIFAR-10)")
# Sec. 3.4: batch 256, lr 0.1 /10 when the error plateaus, up to 60e4 iterations.
IMAGENET_PAPER = Recipe("paper", batch_size=256, iterations=600_000, schedule="plateau", milestones=(),
                        note="He et al. Sec. 3.4 (ImageNet)")
# A fixed-epoch step schedule for ImageNet-style data (the torchvision reference: /10 every 30 of 90 epochs).
IMAGENET_STEP = Recipe("step", batch_size=256, iterations=450_000, milestones=(1 / 3, 2 / 3),
                       note="fixed step schedule, /10 at 1/3 and 2/3 of the run")

RECIPES = {"paper": None, "step": IMAGENET_STEP}


def resolve_recipe(name: str, family: str, depth: int, *, iterations: int | None = None, epochs: float | None = None,
                   train_images: int | None = None, batch_size: int | None = None, lr: float | None = None,
                   warmup: int | None = None) -> Recipe:
    """The recipe ``name`` for a model family, with a user's budget: ``iterations``, or ``epochs`` of
    ``train_images`` at the recipe's batch size (every epoch drops its last incomplete batch). Shorter budgets scale
    the milestones (they are stored as fractions of the run)."""
    from . import fast  # noqa: F401  (registers the `fast` recipe, if present)

    if name == "paper":
        recipe = IMAGENET_PAPER if family == "imagenet" else CIFAR_PAPER
        if family == "cifar" and depth >= 110:
            # Sec. 4.2: lr 0.1 is too large to start converging for 110 layers; warm up at 0.01.
            recipe = replace(recipe, warmup_lr=0.01, warmup_iterations=400)
    elif name in RECIPES and RECIPES[name] is not None:
        recipe = RECIPES[name]
    else:
        raise UsageError(f"unknown recipe {name!r}; choose one of: {choices(RECIPES)}")
    changes: dict = {}
    if iterations is None and epochs is not None:
        if train_images is None:
            raise ValueError("a budget in epochs needs the number of training images")
        iterations = epochs_to_iterations(epochs, train_images // (batch_size or recipe.batch_size))
    if iterations is not None:
        if iterations < 1:
            raise UsageError(f"--iterations must be positive, got {iterations}")
        changes["iterations"] = iterations
        if recipe.warmup_iterations:
            # Sec. 4.2 warms up "until the training error is below 80% (about 400 iterations)": a length the net
            # needs, not a share of the budget. Measured here (ResNet-110, batch 128): 1 or 6 iterations at 0.01, then
            # 0.1, blow up (loss 27 / 23) and stay at chance; 30 reach 0.1 without blowing up but still at chance 30
            # steps later. So a shorter run keeps the 400, and one too short for them warms up until its first
            # milestone, where the rate is 0.01 anyway: it never sees 0.1 before the net is ready for it.
            first = round(min(recipe.milestones) * iterations) if recipe.milestones else iterations
            changes["warmup_iterations"] = min(recipe.warmup_iterations, max(1, first))
    if batch_size is not None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be positive, got {batch_size}")
        changes["batch_size"] = batch_size
    if lr is not None:
        changes["lr"] = lr
    if warmup is not None:  # a linear warm-up of this many iterations replaces the recipe's own
        if warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {warmup}")
        changes.update(warmup_iterations=warmup, warmup_lr=None)
    return replace(recipe, **changes)


def register(recipe: Recipe) -> None:
    RECIPES[recipe.name] = recipe


def epochs_to_iterations(epochs: float, steps_per_epoch: int) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch))
