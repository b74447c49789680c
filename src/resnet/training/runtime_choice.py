"""The runtime a training run uses: ``--runtime auto`` measured with the trainer's own step (``step.train_step``), so
that what is timed is what is run, except where tuning would not pay for itself."""

from __future__ import annotations

from typing import Callable

from ..models import model_config
from ..models.resnet import ModelConfig
from ..runtime import Choice, Runtime, Workload, select_runtime
from ..runtime.autotune import inference_step, synthetic_problem
from . import step
from .recipes import resolve_recipe

MIN_TUNED_ITERATIONS = 500  # shorter training runs keep the fixed default (tuning costs a few dozen steps)


def make_synthetic_step(cfg: ModelConfig, mode: str, batch_size: int) -> Callable[[Runtime], Callable[[], object]]:
    """``make_step`` for the autotuner: the training step (forward, cross-entropy, backward, the paper's SGD step) or
    inference (BN folded, as ``Runtime.prepare_inference``) of a fresh ``cfg`` network on one random batch."""
    if mode == "eval":
        return inference_step(cfg, batch_size)

    def make_step(rt: Runtime) -> Callable[[], object]:
        net, x, y = synthetic_problem(cfg, batch_size, rt)
        model = rt.compile_model(rt.prepare(net))
        opt = step.build_sgd(model.parameters(), resolve_recipe("paper", cfg.family, cfg.depth))

        def train_step():  # the trainer's own step: what is timed is what is run
            return step.train_step(model, opt, x, y, autocast=rt.autocast)[0]
        return train_step

    return make_step


def workload(cfg: ModelConfig, mode: str, batch_size: int) -> Workload:
    """What ``--runtime auto`` times for ``cfg`` in ``mode`` at ``batch_size``: :func:`make_synthetic_step`."""
    return Workload(cfg, mode, batch_size, make_synthetic_step(cfg, mode, batch_size))


def select_train_runtime(tc) -> Choice:
    """``select_runtime`` for a ``TrainConfig``: its model, and its batch size (or its recipe's)."""
    cfg = model_config(tc.model, num_classes=tc.num_classes, shortcut=tc.shortcut, variant=tc.variant)
    recipe_batch = resolve_recipe(tc.recipe, cfg.family, cfg.depth).batch_size
    batch_size = tc.batch_size or recipe_batch
    # Tuning costs a few dozen steps: a short run would not earn them back. Nor is it tuned far above the recipe's
    # batch, where a few models side by side could run out of memory before the trainer has checked the batch.
    short = (tc.iterations is not None and tc.iterations < MIN_TUNED_ITERATIONS) or (tc.epochs is not None
                                                                                     and tc.epochs < 1)
    tune = not short and batch_size <= 4 * recipe_batch
    choice = select_runtime(tc.device, tc.runtime, tc.precision, tc.channels_last, tc.compile,
                            workload=workload(cfg, "train", batch_size) if tune else None)
    if choice.reason == "the default":
        choice.reason += " (not tuned: " + ("a short run)" if short else f"batch {batch_size} far above the recipe's)")
    return choice
