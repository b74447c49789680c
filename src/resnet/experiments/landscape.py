"""Loss landscape (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): the training loss along random directions
around the trained weights, 1-D curves and 2-D contour plots, for plain and residual nets.

Directions are filter-normalised: a Gaussian direction with each filter (output unit of a conv or fc weight) rescaled
to the norm of the same filter of the weights; the direction is zero on BN parameters and biases (1-D tensors). The
loss is the mean cross-entropy on a fixed subset of the training images with the model in eval mode (BN running
statistics), so the only thing that moves is the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.sources import data_source
from ..models import ResNet
from ..reporting.plots import landscape_1d_figure, landscape_2d_figure
from ..reporting.report import near_chance_notes, protocol_lines, table, write_outputs
from ..reporting.verdicts import RATIO_FACTOR, Sample, Verdict, combine, compare_ratio, verdict_section
from ..runs.spec import Options, RunSpec
from ..runs.store import ensure_runs
from .responses import analysis_precision

DEPTHS = {"smoke": (20,), "short": (20, 56), "medium": (20, 56), "paper": (20, 56, 110)}
SPAN = 1.0  # the slices cover [-1, 1] times the filter-normalised direction (Li et al.'s plots)


def filter_normalized_direction(net: ResNet, generator: torch.Generator) -> dict[str, torch.Tensor]:
    direction = {}
    for name, w in net.named_parameters():
        if w.dim() <= 1:  # BN weight/bias, fc bias: not moved
            direction[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.device, w.dtype)
        w_norm = w.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        direction[name] = d * (w_norm / d_norm).view(-1, *([1] * (w.dim() - 1)))
    return direction


@torch.no_grad()
def loss_at(net: ResNet, origin: dict, directions: list[dict], coords: tuple[float, ...], inputs, labels,
            rt, batch_size: int = 500) -> float:
    for name, p in net.named_parameters():
        p.copy_(origin[name] + sum(c * d[name] for c, d in zip(coords, directions)))
    total = 0.0
    for i in range(0, len(inputs), batch_size):
        with rt.autocast():
            logits = net(inputs[i:i + batch_size]).float()
        total += float(torch.nn.functional.cross_entropy(logits, labels[i:i + batch_size], reduction="sum"))
    return total / len(inputs)


def slices(net: ResNet, normalization, images, labels, points: tuple[int, int], rt, seed: int = 0) -> dict:
    net = rt.prepare(net).eval()
    inputs, labels = normalization.to(rt.device)(images.to(rt.device)), labels.to(rt.device)
    if rt.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    origin = {n: p.detach().clone() for n, p in net.named_parameters()}
    g = torch.Generator().manual_seed(seed)  # the same random draw for every net of the same shape
    d1, d2 = filter_normalized_direction(net, g), filter_normalized_direction(net, g)
    n1, n2 = points
    a1 = torch.linspace(-SPAN, SPAN, n1).tolist()
    a2 = torch.linspace(-SPAN, SPAN, n2).tolist()
    try:
        curve = [loss_at(net, origin, [d1], (a,), inputs, labels, rt) for a in a1]
        grid = [[loss_at(net, origin, [d1, d2], (a, b), inputs, labels, rt) for b in a2] for a in a2]
        center = loss_at(net, origin, [], (), inputs, labels, rt)
    finally:
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(origin[n])
    return {"alphas_1d": a1, "loss_1d": curve, "alphas_2d": a2, "loss_2d": grid, "loss_at_weights": center}


def rises(r: dict) -> tuple[float, float]:
    """How far the loss rises above its value at the weights: within +/-0.5 on the 1-D slice, and over the 2-D grid."""
    local = max(c for x, c in zip(r["alphas_1d"], r["loss_1d"]) if abs(x) <= 0.5 + 1e-9)
    return local - r["loss_at_weights"], max(max(row) for row in r["loss_2d"]) - r["loss_at_weights"]


def comparison(results: dict, depth: int) -> Verdict:
    """The claim for one depth: the ResNet's surface is the flatter one. Each measure (1-D and 2-D rise) counts only
    where one net's rise is more than twice the other's (one seed and one pair of directions: no measured spread);
    the claim agrees if a measure agrees and none disagrees (``verdicts.combine``)."""
    (p1, p2), (r1, r2) = rises(results[f"plain-{depth}"]), rises(results[f"ResNet-{depth}"])
    one_d = compare_ratio(Sample("ResNet", r1), Sample("plain", p1))
    two_d = compare_ratio(Sample("ResNet", r2), Sample("plain", p2))
    return Verdict(f"Depth {depth}: the ResNet's loss surface is flatter around its weights than the plain net's "
                   "(rise of the loss above its value at the weights)", combine([one_d, two_d]),
                   f"within +/-0.5 on the 1-D slice: {one_d.evidence}, {one_d.answer}; over the 2-D grid: "
                   f"{two_d.evidence}, {two_d.answer}")


TITLE = "Loss landscape: plain vs residual"


def loss_landscape(opts: Options) -> None:
    depths = opts.depths or DEPTHS[opts.budget]
    runs = ensure_runs([RunSpec(f"{fam}{d}") for d in depths for fam in ("plain", "resnet")], opts)
    train = data_source(opts.data).open("train", opts.data_dir)
    n = min(opts.plan.landscape_images, len(train.images))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train.images), generator=g)[:n]
    images, labels = train.images[idx], train.labels[idx]
    rt = opts.analysis_runtime()
    results = {}
    for run in runs:
        w = run.weights("last")
        results[run.spec.label] = dict(slices(w.model, w.normalization, images, labels, opts.plan.landscape_points,
                                              rt), run=str(run.path), val_error=run.final_val_error,
                                       first_train_loss=run.curve[0]["train_loss"] if run.curve else None)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"depths": depths, "images": n, "analysis_precision": rt.precision, "runs": [r.path.name for r in runs]}
    write_outputs(opts, TITLE, render_landscape(opts, results, extra), results, extra,
                  landscape_figures(opts, results, extra))


def landscape_figures(opts: Options, results: dict, config: dict) -> list[Path]:
    """The 1-D slices of every net, and per depth the 2-D contours of plain against residual, from the metrics."""
    figs = [landscape_1d_figure({k: (v["alphas_1d"], v["loss_1d"]) for k, v in results.items()},
                                opts.out_dir / "landscape_1d.png")]
    for d in config["depths"]:
        pair = {k: (v["alphas_2d"], v["loss_2d"]) for k, v in results.items() if k in (f"plain-{d}", f"ResNet-{d}")}
        figs.append(landscape_2d_figure(pair, opts.out_dir / f"landscape_2d_{d}.png"))
    return figs


def render_landscape(opts: Options, results: dict, config: dict) -> list[str]:
    depths = opts.depths or DEPTHS[opts.budget]
    rows = []
    for label, r in results.items():
        curve, a = r["loss_1d"], r["alphas_1d"]
        mid = len(curve) // 2
        half = [c for x, c in zip(a, curve) if abs(x) <= 0.5 + 1e-9]
        rows.append([label, f"{r['loss_at_weights']:.3f}", f"{max(half):.3f}", f"{curve[0]:.3f}",
                     f"{curve[-1]:.3f}", f"{max(max(row) for row in r['loss_2d']):.3f}",
                     "yes" if min(range(len(curve)), key=curve.__getitem__) in (mid - 1, mid, mid + 1) else "no"])
    first = results[next(iter(results))]
    body = [
        "Filter-normalised random slices of the training loss around the trained weights (Li et al. 2018), for "
        "plain and residual nets of the same depth. Skip connections are said to make the landscape smoother "
        "(the claim tested here); Li et al. show ResNet-56's surface convex-looking and plain-56's chaotic.", "",
        *protocol_lines(opts, runs=len(results), measured="train"),
        f"- Loss: mean cross-entropy on {config.get('images')} fixed training images (un-augmented), eval mode, "
        f"{analysis_precision(opts, config)}; direction entries on "
        "BN parameters and biases are zero; the same random seed draws the directions of every net.",
        f"- 1-D: {len(first['alphas_1d'])} points on [-1, 1]; 2-D: "
        f"{len(first['alphas_2d'])}x{len(first['alphas_2d'])} grid on [-1, 1]^2.", "",
        table(["net", "loss at the weights", "max loss for steps within +/-0.5 (1-D)", "loss at -1", "loss at +1",
               "max loss on the 2-D grid", "1-D minimum at the weights"], rows), "",
        *near_chance_notes([(label, r.get("val_error"), r.get("first_train_loss")) for label, r in results.items()]),
    ]
    spread = (f"- Spread: none measured for these rises (one seed, one pair of random directions per net); a measure "
              f"counts only where one net's rise is more than {RATIO_FACTOR:g} times the other's, an assumed margin. "
              "The claim agrees if one measure agrees and none disagrees.")
    verdicts = [comparison(results, d) for d in depths if f"plain-{d}" in results and f"ResNet-{d}" in results]
    return body + ["", *verdict_section(verdicts, [spread])]
