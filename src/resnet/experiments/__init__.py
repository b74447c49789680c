"""The paper's experiments as named, runnable recipes (``resnet reproduce NAME``).

Each experiment writes ``report.md`` (our numbers next to the paper's, the split, the budget, the number of runs and
the command that regenerates it), PNG figures, ``config.json`` and ``metrics.json`` to its output folder. The CIFAR
experiments share their training runs (``runs.py``): every (model, shortcut, budget, seed, data) is trained once.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import UsageError, choices
from .budgets import BUDGETS, Budget, get_budget
from .runs import Options, RunSpec

# name -> (module, function, one line on what it reproduces)
EXPERIMENTS = {
    "cifar-depth": ("cifar", "cifar_depth", "Table 6: ResNet-20..110(1202) error against depth"),
    "cifar-degradation": ("cifar", "cifar_degradation", "Fig. 6: plain vs ResNet 20/32/44/56 error curves"),
    "cifar-shortcuts": ("cifar", "cifar_shortcuts", "Table 3 at CIFAR scale: shortcut options A/B/C"),
    "layer-responses": ("responses", "layer_responses", "Fig. 7: std of every 3x3 layer's response"),
    "imagenet-depth": ("imagenet", "imagenet_experiment", "Table 2: plain/ResNet-18/34 on ImageNet (cluster configs)"),
    "imagenet-shortcuts": ("imagenet", "imagenet_experiment", "Tables 3-4: ResNet-34 A/B/C, 50/101/152 (configs)"),
    "gradient-flow": ("gradients", "gradient_flow", "per-layer gradient norms, deep plain vs residual"),
    "lesion": ("lesion", "lesion", "delete one block at test time: plain nets collapse, ResNets degrade gracefully"),
    "loss-landscape": ("landscape", "loss_landscape", "filter-normalised 1-D/2-D loss slices, plain vs residual"),
}


def run_experiment(opts: Options) -> None:
    if opts.name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {opts.name!r}; choose one of: {choices(EXPERIMENTS)}")
    get_budget(opts.budget)
    module, function, _ = EXPERIMENTS[opts.name]
    getattr(import_module(f".{module}", __name__), function)(opts)


__all__ = ["BUDGETS", "Budget", "EXPERIMENTS", "Options", "RunSpec", "get_budget", "run_experiment"]
