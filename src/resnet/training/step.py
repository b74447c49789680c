"""One training step, and the optimiser it steps: what the trainer runs, the speed benchmark times and the
gradient-flow experiment records, so that what is measured is what is run.

The paper's step (Sec. 3.4 / 4.2): a forward pass, the cross-entropy loss (with the recipe's label smoothing, 0 in
the paper), the backward pass and an SGD update with momentum and weight decay (Nesterov momentum if the recipe says
so).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from .recipe import Recipe


def build_sgd(params, recipe: Recipe) -> torch.optim.SGD:
    """The recipe's optimiser: SGD at the recipe's base rate (the schedule sets each step's rate), momentum, weight
    decay and Nesterov as the recipe says (the paper: 0.9, 1e-4, no Nesterov)."""
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           nesterov=recipe.nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               autocast: Callable[[], ContextManager] | None = None, label_smoothing: float = 0.0,
               before_update: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of ``model`` (as called: compiled, DDP-wrapped or plain) on the batch ``(x, y)``.

    ``autocast``: the runtime's precision context (``Runtime.autocast``; None: fp32). ``before_update`` runs after
    the backward pass and before the optimiser's update, with the gradients in place (the gradient-flow experiment
    records them there). Returns the loss and the logits, detached and left on the device (no host sync)."""
    with (autocast or contextlib.nullcontext)():
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if before_update is not None:
        before_update()
    optimizer.step()
    return loss.detach(), logits.detach()
