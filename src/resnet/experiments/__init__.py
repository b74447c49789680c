"""The paper's experiments as named, runnable recipes (``resnet reproduce NAME``).

Each experiment writes ``report.md`` (our numbers next to the paper's, the split, the budget, the number of runs and
the command that regenerates it), PNG figures, ``config.json`` and ``metrics.json`` to its output folder
(``resnet.reporting``). The CIFAR experiments share their training runs (``resnet.runs``): every (model, shortcut,
budget, seed, data) is trained once. Every report reads its numbers with the rule of ``reporting/verdicts.py`` and can
be written again from its ``metrics.json`` (``rerender_experiment``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path

from ..data.sources import data_source
from ..errors import UsageError, choices
from ..reporting.report import write_report
from ..runs.budgets import get_budget
from ..runs.spec import Options, source_version


@dataclass(frozen=True)
class Experiment:
    """Where an experiment lives: its module, the function that runs it, one line on what it reproduces, and the
    functions that write its report's text and figures again from its metrics.json alone (none for the cluster
    configurations, which measure nothing)."""

    module: str
    run: str
    about: str
    render: str | None = None
    figures: str | None = None


EXPERIMENTS = {
    "cifar-depth": Experiment("cifar", "cifar_depth", "Table 6: ResNet-20..110(1202) error against depth",
                              "render_depth", "depth_figures"),
    "cifar-degradation": Experiment("cifar", "cifar_degradation", "Fig. 6: plain vs ResNet 20/32/44/56 error curves",
                                    "render_degradation", "degradation_figures"),
    "cifar-shortcuts": Experiment("shortcuts", "cifar_shortcuts", "Table 3 at CIFAR scale: shortcut options A/B/C",
                                  "render_shortcuts", "shortcuts_figures"),
    "layer-responses": Experiment("responses", "layer_responses", "Fig. 7: std of every 3x3 layer's response",
                                  "render_responses", "responses_figures"),
    "imagenet-depth": Experiment("imagenet", "imagenet_experiment",
                                 "Table 2: plain/ResNet-18/34 on ImageNet (cluster configs)"),
    "imagenet-shortcuts": Experiment("imagenet", "imagenet_experiment",
                                     "Tables 3-4: ResNet-34 A/B/C, 50/101/152 (configs)"),
    "gradient-flow": Experiment("gradients", "gradient_flow", "per-layer gradient norms, deep plain vs residual",
                                "render_gradient_flow", "gradient_flow_figures"),
    "lesion": Experiment("lesion", "lesion",
                         "delete one block at test time: plain nets collapse, ResNets degrade gracefully",
                         "render_lesion", "lesion_figures"),
    "loss-landscape": Experiment("landscape", "loss_landscape",
                                 "filter-normalised 1-D/2-D loss slices, plain vs residual", "render_landscape",
                                 "landscape_figures"),
}
# the reports whose text and figures can be written again from their metrics.json alone
RENDERERS = tuple(name for name, e in EXPERIMENTS.items() if e.render)


def run_experiment(opts: Options) -> Path:
    """Run ``opts.name`` (training what it needs, reusing what is trained) and write its report; returns the report's
    path."""
    if opts.name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {opts.name!r}; choose one of: {choices(EXPERIMENTS)}")
    get_budget(opts.budget)
    experiment = EXPERIMENTS[opts.name]
    if not opts.records:  # the report names the images it measures on (the records' reports name theirs)
        opts = replace(opts, data_files=data_source(opts.data).describe_files(opts.data_dir))
    getattr(import_module(f".{experiment.module}", __name__), experiment.run)(opts)
    return opts.out_dir / "report.md"


def rerender_experiment(name: str, metrics_path: str | Path) -> Path:
    """Write ``NAME``'s ``report.md`` and its figures again from a ``metrics.json`` (its ``config.json`` beside it),
    with the current text, verdicts and plotting code, without training or measuring anything: ``config.json`` keeps
    the original code version and gains a ``rendered`` entry, ``metrics.json`` is not touched. Returns the report's
    path."""
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; choose one of: {choices(EXPERIMENTS)}")
    if name not in RENDERERS:
        raise UsageError(f"{name} writes cluster configurations, not measurements: there is nothing to re-render; "
                         f"--from-metrics works for {choices(RENDERERS)}")
    experiment = EXPERIMENTS[name]
    module = import_module(f".{experiment.module}", __name__)
    title = module.TITLES[name] if hasattr(module, "TITLES") else module.TITLE
    path = Path(metrics_path)
    out = path.parent
    try:
        metrics = json.loads(path.read_text())
        config = json.loads((out / "config.json").read_text())
    except OSError as e:
        raise UsageError(f"cannot read {e.filename}: {e.strerror}; give the metrics.json of a report folder") from None
    except ValueError as e:
        raise UsageError(f"{path} or its config.json is not valid JSON ({e})") from None
    if config.get("name") != name:
        raise UsageError(f"{path} belongs to the experiment {config.get('name')!r}, not {name!r}")
    opts = Options.from_config(config)
    body = getattr(module, experiment.render)(opts, metrics, config)
    plots = getattr(module, experiment.figures)(replace(opts, out=str(out)), metrics, config)  # beside the metrics read
    version = source_version()
    command = f"resnet reproduce {name} --from-metrics {path}"
    config["rendered"] = {"code_version": version, "from_metrics": str(path), "command": command}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    footer = [f"The numbers come from the original runs and measurements (code {config.get('code_version')}, "
              "`config.json`, raw numbers in `metrics.json`); the text, the verdicts and the figures were written "
              f"again from `metrics.json` by `{command}` (code {version}), without training or measuring anything. "
              "The first command regenerates everything: it reuses finished runs and trains missing ones."]
    return write_report(out, title, body, plots, [opts.command(), command], footer)


__all__ = ["EXPERIMENTS", "RENDERERS", "Experiment", "rerender_experiment", "run_experiment"]
