"""Lesion study (Veit et al. 2016): delete one block at test time and measure the validation error.

Deleting a residual block keeps only its shortcut: ``y = relu(shortcut(x))``, which is ``x`` itself for an identity
block (``x`` is the output of a ReLU). A plain block has no shortcut: deleting it means skipping it, ``y = x``, which
is possible only where the block keeps the shape (not at the first block of a stage that downsamples/widens).
"""

from __future__ import annotations

import statistics
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..evaluation.evaluate import evaluate_images
from ..models import ResNet
from ..reporting.plots import lesion_figure
from ..reporting.report import near_chance_notes, write_outputs
from ..reporting.verdicts import Sample, compare, majority, not_tested, verdict, verdict_section
from ..runs.spec import Options, RunSpec
from ..runs.store import ensure_runs
from .responses import (SAMPLES_NOTE, across_seeds, analysis_protocol_lines, first_train_loss, one_net,
                        recorded_analyses, validation_images)

DEPTHS = {"smoke": (20,), "short": (56,), "medium": (56,), "paper": (56, 110), "fast-32k": (56,)}


class DeletedBlock(nn.Module):
    """What is left of a block once its residual branch F is deleted: the shortcut (Eq. 1 with F = 0)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.shortcut = block.downsample
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:  # plain block that keeps the shape: skip it
            return x
        return self.relu(self.shortcut(x))


def can_delete(block: nn.Module) -> bool:
    """Residual blocks always; plain blocks only where input and output shapes agree."""
    if block.downsample is not None:
        return True
    conv = block.conv1
    out_ch = block.conv3.out_channels if hasattr(block, "conv3") else block.conv2.out_channels
    return conv.stride == (1, 1) and conv.in_channels == out_ch


@contextmanager
def deleted(net: ResNet, index: int):
    """``net`` with block ``index`` (counting over all stages) replaced by its shortcut, restored on exit."""
    where = [(stage, j) for stage in net.stages() for j in range(len(stage))]
    stage, j = where[index]
    block = stage[j]
    if not can_delete(block):
        raise ValueError(f"block {index} of {net.config.name} changes the shape and has no shortcut to keep")
    stage[j] = DeletedBlock(block)
    try:
        yield net
    finally:
        stage[j] = block


def lesion_errors(net: ResNet, normalization, images, labels, rt) -> dict:
    net = rt.prepare(net).eval()

    def error() -> float:
        return evaluate_images(net, normalization, images, labels, device=rt.device,
                               autocast_dtype=rt.autocast_dtype)["top1_error"]

    intact = error()
    errors = []
    for i, block in enumerate(net.blocks()):
        if not can_delete(block):
            errors.append(None)
            continue
        with deleted(net, i):
            errors.append(error())
    return {"intact": intact, "errors": errors}


TITLE = "Lesion study: deleting single blocks at test time"
COSTLY = 10.0  # points of error: a deletion costing more is not "graceful" (the table's column)
NEAR_CHANCE = 80.0  # % error: a plain net "collapses" when a deletion takes it this close to chance (90%)


def mean_cost(lesion: dict) -> float:
    """Points of validation error one deletion adds, on average over the blocks that can be deleted."""
    return statistics.mean(e - lesion["intact"] for e in lesion["errors"] if e is not None)


def recorded_lesion(opts: Options, depths) -> None:
    """The lesion study from the campaign's records: the first seed's per-block errors, every seed's mean cost of a
    deletion kept for the across-seed test. Nothing is trained or measured."""
    curves, images = {}, None
    for label, analysed in recorded_analyses(opts, depths).items():
        analysed = [(run, a) for run, a in analysed if "lesion" in a]
        if not analysed:
            continue
        run, first = analysed[0]
        images = first["images"]
        curves[label] = dict(first["lesion"], run=run.path.name, val_error=run.final_val_error,
                             first_train_loss=first_train_loss(run), seeds=[r.spec.seed for r, _ in analysed],
                             mean_cost=[mean_cost(a["lesion"]) for _, a in analysed],
                             runs=[r.path.name for r, _ in analysed])
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"depths": depths, "images": images, "analysis_precision": "fp32",
             "runs": [name for c in curves.values() for name in c["runs"]]}
    write_outputs(opts, TITLE, render_lesion(opts, curves, extra), curves, extra, lesion_figures(opts, curves, extra))


def lesion(opts: Options) -> None:
    depths = opts.depths or DEPTHS[opts.budget]
    if opts.records:
        return recorded_lesion(opts, depths)
    runs = ensure_runs([RunSpec(f"{fam}{d}") for d in depths for fam in ("plain", "resnet")], opts)
    images, labels = validation_images(opts, opts.plan.analysis_images)
    rt = opts.analysis_runtime()
    curves = {}
    for run in runs:
        w = run.weights("last")
        curves[run.spec.label] = dict(lesion_errors(w.model, w.normalization, images, labels, rt),
                                      run=str(run.path), val_error=run.final_val_error,
                                      first_train_loss=run.curve[0]["train_loss"] if run.curve else None)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"depths": depths, "images": len(images), "analysis_precision": rt.precision,
             "runs": [r.path.name for r in runs]}
    write_outputs(opts, TITLE, render_lesion(opts, curves, extra), curves, extra, lesion_figures(opts, curves, extra))


def lesion_figures(opts: Options, curves: dict, config: dict) -> list[Path]:
    """The error after deleting each block in turn, every net, from the report's metrics."""
    return [lesion_figure(curves, opts.out_dir / "lesion.png")]


def render_lesion(opts: Options, curves: dict, config: dict) -> list[str]:
    depths = opts.depths or DEPTHS[opts.budget]
    lines = []
    for label, c in curves.items():
        errs = [e for e in c["errors"] if e is not None]
        n_skip = sum(e is None for e in c["errors"])
        lines.append(f"| {label} | {c['intact']:.2f} | {sum(errs) / len(errs):.2f} | {max(errs):.2f} | "
                     f"{sum(e - c['intact'] > COSTLY for e in errs)} of {len(errs)} | {n_skip} |")
    body = [
        "Delete one block at a time at test time (keep only its shortcut; for plain nets skip the block where the "
        "shape allows) and measure the validation error. Veit et al. (2016) found that ResNets degrade "
        "gracefully and plain nets collapse.", "",
        *analysis_protocol_lines(opts, config, len(curves)), "",
        "| net | error %, nothing deleted | mean error %, one block deleted | worst error % | deletions costing "
        f"> {COSTLY:g} points | blocks that cannot be deleted (plain, shape changes) |",
        "|---|---|---|---|---|---|", *lines, "",
        "Per-block errors are in `metrics.json` (`errors[i]` is block i+1 deleted; null where it cannot be).", "",
        *near_chance_notes([(label, c.get("val_error"), c.get("first_train_loss")) for label, c in curves.items()]),
    ]
    if opts.records:
        seeds = ", ".join(f"{label} seeds {', '.join(f'{s}: {v:.2f}' for s, v in zip(c['seeds'], c['mean_cost']))}"
                          for label, c in curves.items())
        body += [f"Mean cost of one deletion, points of validation error, by recorded seed: {seeds or 'none'}.", "",
                 SAMPLES_NOTE]
        seed_costs = {label: c["mean_cost"] for label, c in curves.items()}
        return body + ["", *verdict_section(lesion_verdicts(curves, depths, seed_costs), rule=opts.plan.verdict_rule)]
    spread = ("- Spread: the values compared are the single-block deletions of one trained net per depth (one seed "
              "each), so the tests are over blocks; the seed-to-seed spread of these errors was not measured.")
    return body + ["", *verdict_section(lesion_verdicts(curves, depths), [spread])]


def lesion_verdicts(curves: dict, depths, seed_costs: dict[str, list[float]] | None = None) -> list:
    """Per depth: a deletion costs the ResNet less than the plain net (across seeds, ``seed_costs``: each seed's mean
    cost, where both nets have two or more; else over blocks); most deletions cost the ResNet little (graceful); most
    deletions take the plain net to near chance (collapse). The counts are over the blocks of one net (the first
    seed's)."""
    def said(v):  # a records report says, next to each p-value over blocks, that they are the blocks of one net
        return v if seed_costs is None else one_net(v, "block")

    def costs(label: str) -> list[float]:
        c = curves[label]
        return [e - c["intact"] for e in c["errors"] if e is not None]

    verdicts = []
    for d in depths:
        plain, res = f"plain-{d}", f"ResNet-{d}"
        if plain not in curves or res not in curves:
            verdicts.append(not_tested(f"Depth {d}: ResNets degrade gracefully, plain nets collapse",
                                       f"{plain} and {res} not both measured"))
            continue
        claim = f"Deleting one block costs {res} less than {plain} (points of validation error added per deletion)"
        if across_seeds(res, plain, seed_means=seed_costs):
            verdicts.append(verdict(claim, compare(Sample(res, seed_costs[res]), Sample(plain, seed_costs[plain]))))
        else:
            verdicts.append(said(verdict(claim, compare(Sample(res, costs(res), unit="block"),
                                                        Sample(plain, costs(plain), unit="block")))))
        cheap = sum(c <= COSTLY for c in costs(res))
        verdicts.append(said(verdict(f"{res} degrades gracefully: most single deletions cost it at most {COSTLY:g} "
                                     "points", majority(cheap, len(costs(res)),
                                                        f"deletions cost at most {COSTLY:g} points"))))
        errs = [e for e in curves[plain]["errors"] if e is not None]
        collapsed = sum(e >= NEAR_CHANCE for e in errs)
        verdicts.append(said(verdict(f"{plain} collapses: most single deletions take it to {NEAR_CHANCE:g}% error or "
                                     "more (chance is 90%)",
                                     majority(collapsed, len(errs), f"deletions reach {NEAR_CHANCE:g}% error"))))
    return verdicts
