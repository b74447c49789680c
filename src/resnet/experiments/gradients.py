"""Gradient flow: each conv layer's weight-gradient norm, in depth order, at several points of a short
training of a deep plain net and its residual twin. The paper says BN already keeps plain nets' gradients from
vanishing (Sec. 4.1: "the backward propagated gradients exhibit healthy norms with BN"); a common reading of ResNets
says shortcuts are what makes the flow stable. This measures it.

A short training with the trainer's own step (``training.step.train_step``) and the recipe's own optimiser and loss
(the paper's recipe: SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1; the ResNet-110 warm-up at lr 0.01), on
the same augmented batches as the trainer, recording the gradient of the loss (weight decay excluded) just before
chosen optimiser updates.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path

import torch

from ..data.batches import InMemoryBatches
from ..data.normalize import Normalization
from ..data.sources import data_source
from ..models import ResNet, build_model
from ..reporting.plots import gradient_figure
from ..reporting.report import protocol_lines, table, write_outputs
from ..reporting.verdicts import Sample, Verdict, compare, verdict_section
from ..runs.spec import Options
from ..runs.store import check_data
from ..training.recipes import resolve_recipe
from ..training.step import build_sgd, set_lr, train_step
from .responses import analysis_precision

DEPTHS = {"smoke": (20,), "short": (56,), "medium": (56,), "paper": (56, 110)}
logger = logging.getLogger("resnet.experiments")  # "[reproduce] ..." lines, shown as they are


def conv_layers(net: ResNet) -> list[tuple[str, torch.nn.Conv2d]]:
    """The conv layers of the main path in depth order (stem, then each block's convs); projection shortcuts are
    left out so that the x-axis is the path through the layers."""
    return [(n, m) for n, m in net.named_modules()
            if isinstance(m, torch.nn.Conv2d) and ".downsample" not in n]


def train_recording(model: str, opts: Options, train, norm: Normalization, rt) -> dict:
    plan = opts.plan
    torch.manual_seed(0)
    net = rt.prepare(build_model(model)).train()
    recipe = resolve_recipe("paper", net.config.family, net.config.depth, iterations=plan.gradient_steps,
                            batch_size=plan.batch_size, warmup=plan.warmup)
    batches = InMemoryBatches(train.images, train.labels, norm, recipe.batch_size, seed=0, device=rt.device,
                              channels_last=rt.channels_last)
    optimizer = build_sgd(net.parameters(), recipe)
    layers = conv_layers(net)
    records, losses = {}, []
    stream = batches.iterate(0)
    t0 = time.perf_counter()
    for step in range(plan.gradient_steps):
        set_lr(optimizer, recipe.lr_at(step))
        x, y = next(stream)

        def record(step=step):  # the gradients of this step, before the update
            if step in plan.gradient_records:
                records[step] = [float(m.weight.grad.float().norm()) for _, m in layers]

        loss, _ = train_step(net, optimizer, x, y, autocast=rt.autocast, label_smoothing=recipe.label_smoothing,
                             before_update=record)
        losses.append(float(loss))
    return {"layers": [n for n, _ in layers], "grad_norms": records, "loss": losses,
            "seconds": round(time.perf_counter() - t0, 1), "recipe": recipe.to_dict()}


def evenness(depth: int, plain: dict, resnet: dict) -> Verdict:
    """The claim that shortcuts even the flow, at the last recorded iteration: the ResNet's layers have the more even gradient norms.
    Evenness is tested as a Brown-Forsythe test: Welch's test on each layer's distance from its net's median, in
    decades (|log10 norm - median log10 norm|); the max/min factor over the layers is reported beside it."""
    plain, resnet = _by_step(plain), _by_step(resnet)
    step = max(plain)

    def distances(norms: list[float]) -> list[float]:
        logs = [math.log10(max(n, 1e-30)) for n in norms]
        mid = statistics.median(logs)
        return [abs(v - mid) for v in logs]

    def factor(norms: list[float]) -> float:
        return max(norms) / max(min(norms), 1e-30)

    finding = compare(Sample(f"ResNet-{depth}", distances(resnet[step]), unit="layer"),
                      Sample(f"plain-{depth}", distances(plain[step]), unit="layer"), digits=3)
    return Verdict(f"Depth {depth}, iteration {step}: the ResNet's layer gradient norms are more even than the plain "
                   "net's (mean distance of a layer from its net's median, in decades)", finding.answer,
                   f"max/min over the layers: plain {factor(plain[step]):.3g}, ResNet {factor(resnet[step]):.3g}; "
                   + finding.evidence)


def _by_step(records: dict) -> dict[int, list[float]]:
    """Recorded steps as integers (``metrics.json`` stores them as strings)."""
    return {int(k): v for k, v in records.items()}


TITLE = "Gradient flow: per-layer gradient norms, plain vs residual"


def gradient_flow(opts: Options) -> None:
    check_data(opts)
    depths = opts.depths or DEPTHS[opts.budget]
    rt = opts.analysis_runtime()
    train = data_source(opts.data).open("train", opts.data_dir)
    norm = Normalization.mean_image(train.images)
    results = {}
    for d in depths:
        for fam, label in (("plain", f"plain-{d}"), ("resnet", f"ResNet-{d}")):
            logger.info(f"[reproduce] gradient flow: training {label} for {opts.plan.gradient_steps} iterations")
            results[label] = train_recording(f"{fam}{d}", opts, train, norm, rt)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"depths": depths, "analysis_precision": rt.precision}
    write_outputs(opts, TITLE, render_gradient_flow(opts, results, extra), results, extra,
                  gradient_flow_figures(opts, results, extra))


def gradient_flow_figures(opts: Options, results: dict, config: dict) -> list[Path]:
    """Per depth, plain against residual: each layer's gradient norm over training, from the report's metrics."""
    return [gradient_figure({k: v["grad_norms"] for k, v in results.items() if k.endswith(f"-{d}")},
                            opts.out_dir / f"gradient_flow_{d}.png") for d in config["depths"]]


def render_gradient_flow(opts: Options, results: dict, config: dict) -> list[str]:
    depths = opts.depths or DEPTHS[opts.budget]
    rows = []
    for label, r in results.items():
        for step, norms in sorted(_by_step(r["grad_norms"]).items()):
            first, last = norms[0], norms[-1]
            rows.append([label, step, f"{r['loss'][step]:.3f}", f"{first:.3g}", f"{last:.3g}",
                         f"{first / last:.3g}" if last > 0 else "inf",
                         f"{max(norms) / max(min(norms), 1e-30):.3g}",
                         "no" if all(map(math.isfinite, norms)) else "yes"])
    warmup = (f", linear warm-up over the first {opts.plan.warmup} iterations as in every run of this budget"
              if opts.plan.warmup else "")
    body = [
        "Per-layer gradient norms (the gradient of the training loss w.r.t. each conv layer's weights, in depth "
        "order from the stem to the last block) during a short training of a deep plain net and its residual "
        "twin. Vanishing gradients would show as norms falling by orders of magnitude towards the input side; "
        "exploding ones as the reverse.", "",
        *protocol_lines(opts, runs=len(results), measured="train"),
        f"- Training: {opts.plan.gradient_steps} iterations of the paper's recipe (lr 0.1, batch "
        f"{opts.plan.batch_size or 128}{warmup}), seed 0, on the training split; gradients recorded before the "
        f"optimiser steps {', '.join(map(str, opts.plan.gradient_records))} (weight decay not included); precision "
        f"{analysis_precision(opts, config)}.", "",
        table(["net", "iteration", "batch loss", "grad norm, first conv (stem)", "grad norm, last conv",
               "first / last", "max / min over layers", "non-finite"], rows), "",
        "The paper (Sec. 4.1) says BN already keeps a plain net's gradients healthy; a common reading of it is that "
        "shortcuts are what makes the flow even. The verdict below tests that reading; the table shows whether the "
        "plain net's gradients vanish (the first / last column).",
    ]
    spread = ("- Spread: the values compared are the conv layers of one training per net (seed 0), so the test is "
              "over layers; the seed-to-seed spread was not measured.")
    verdicts = [evenness(d, results[f"plain-{d}"]["grad_norms"], results[f"ResNet-{d}"]["grad_norms"])
                for d in depths if f"plain-{d}" in results and f"ResNet-{d}" in results]
    return body + ["", *verdict_section(verdicts, [spread])]
