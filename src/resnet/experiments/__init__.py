"""The paper's experiments as named, runnable recipes (``resnet reproduce NAME``).

Each experiment writes ``report.md`` (our numbers next to the paper's, the split, the budget, the number of runs and
the command that regenerates it), PNG figures, ``config.json`` and ``metrics.json`` to its output folder. The CIFAR
experiments share their training runs (``runs.py``): every (model, shortcut, budget, seed, data) is trained once.
Every report reads its numbers with the rule of ``verdicts.py`` and can be written again from its ``metrics.json``
(``rerender_experiment``).
"""

from __future__ import annotations

from importlib import import_module

from ..errors import UsageError, choices
from .budgets import BUDGETS, Budget, get_budget
from .report import rerender
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


# name -> (module, render function): the reports that can be written again from their metrics.json
RENDERERS = {
    "cifar-depth": ("cifar", "render_depth"),
    "cifar-degradation": ("cifar", "render_degradation"),
    "cifar-shortcuts": ("cifar", "render_shortcuts"),
    "layer-responses": ("responses", "render_responses"),
    "gradient-flow": ("gradients", "render_gradient_flow"),
    "lesion": ("lesion", "render_lesion"),
    "loss-landscape": ("landscape", "render_landscape"),
}


def run_experiment(opts: Options) -> None:
    if opts.name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {opts.name!r}; choose one of: {choices(EXPERIMENTS)}")
    get_budget(opts.budget)
    module, function, _ = EXPERIMENTS[opts.name]
    getattr(import_module(f".{module}", __name__), function)(opts)


def rerender_experiment(name: str, metrics_path: str):
    """Write ``NAME``'s report again from a ``metrics.json`` (its ``config.json`` beside it), with the current text and
    verdicts, without training or measuring anything. Returns the report's path."""
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; choose one of: {choices(EXPERIMENTS)}")
    if name not in RENDERERS:
        raise UsageError(f"{name} writes cluster configurations, not measurements: there is nothing to re-render; "
                         f"--from-metrics works for {choices(RENDERERS)}")
    module_name, render = RENDERERS[name]
    module = import_module(f".{module_name}", __name__)
    title = module.TITLES[name] if hasattr(module, "TITLES") else module.TITLE
    return rerender(name, metrics_path, title, getattr(module, render))


__all__ = ["BUDGETS", "Budget", "EXPERIMENTS", "Options", "RunSpec", "get_budget", "rerender_experiment",
           "run_experiment"]
