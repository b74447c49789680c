"""Fig. 7: standard deviation of the responses of every 3x3 layer (after BN, before the ReLU / the addition).

In a basic block the responses are the outputs of ``bn1`` (before its ReLU) and ``bn2`` (before the shortcut is
added): forward hooks on those two modules of every block. The stem's 3x3 conv is not a residual layer and is left
out. The std of a layer is the std of each channel over the images and positions, averaged over the channels,
measured on the validation images with the trained net in eval mode.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ..data.sources import data_source
from ..models import ResNet
from ..reporting.plots import responses_figure
from ..reporting.report import near_chance_notes, protocol_lines, table, write_outputs
from ..reporting.verdicts import Sample, compare, not_tested, ordering, verdict, verdict_section
from ..runs.spec import Options, RunSpec
from ..runs.store import ensure_runs
from ..runtime import resolve_runtime
from . import paper

DEPTHS = {"smoke": (20,), "short": (20, 56, 110), "medium": (20, 56, 110), "paper": (20, 56, 110)}


def response_layers(net: ResNet) -> list[tuple[str, torch.nn.Module]]:
    """The BN modules whose outputs are the 3x3 layers' responses, in depth order."""
    layers = []
    for s, stage in enumerate(net.stages()):
        for b, block in enumerate(stage):
            if not hasattr(block, "conv2") or hasattr(block, "conv3"):
                raise ValueError("layer responses are defined for basic blocks (the CIFAR nets)")
            layers += [(f"layer{s + 1}.{b}.bn1", block.bn1), (f"layer{s + 1}.{b}.bn2", block.bn2)]
    return layers


class ResponseStats:
    """Forward hooks that accumulate each layer's per-channel sums over every batch passed through the net."""

    def __init__(self, net: ResNet):
        self.layers = response_layers(net)
        self.sums: list[list[torch.Tensor] | None] = [None] * len(self.layers)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            y = output.detach().double()
            n = y.shape[0] * y.shape[2] * y.shape[3]
            s = [torch.tensor(float(n), dtype=torch.float64), y.sum((0, 2, 3)).cpu(), (y * y).sum((0, 2, 3)).cpu()]
            self.sums[i] = s if self.sums[i] is None else [a + b for a, b in zip(self.sums[i], s)]
        return hook

    def __len__(self) -> int:
        return len(self.handles)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def stds(self) -> list[float]:
        out = []
        for n, s1, s2 in self.sums:
            var = (s2 / n - (s1 / n) ** 2).clamp_min(0)
            out.append(float(var.sqrt().mean()))
        return out


@torch.no_grad()
def layer_stds(net: ResNet, normalization, images: torch.Tensor, batch_size: int = 250, rt=None) -> list[float]:
    rt = rt or resolve_runtime("cpu", "fp32", compile=False)
    net = rt.prepare(net).eval()
    norm = normalization.to(rt.device)
    stats = ResponseStats(net)
    try:
        for i in range(0, len(images), batch_size):
            with rt.autocast():
                net(norm(images[i:i + batch_size].to(rt.device)))
    finally:
        stats.remove()
    return stats.stds()


def validation_images(opts: Options, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``limit`` validation images drawn at random (seeded, the same for every net), or all of them. Not the first
    ones: image folders list the images class by class, so a prefix would hold one or two classes only."""
    val = data_source(opts.data).open("val", opts.data_dir)
    if limit is None or limit >= len(val.images):
        return val.images, val.labels
    idx = torch.randperm(len(val.images), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return val.images[idx], val.labels[idx]


TITLE = "Fig. 7: standard deviations of layer responses"


def layer_responses(opts: Options) -> None:
    depths = opts.depths or DEPTHS[opts.budget]
    specs = [RunSpec(f"{fam}{d}") for d in depths for fam in ("plain", "resnet")]
    runs = ensure_runs(specs, opts)
    images, _ = validation_images(opts, opts.plan.analysis_images)
    rt = opts.analysis_runtime()
    stds, metrics = {}, {}
    for run in runs:
        w = run.weights("last")
        values = layer_stds(w.model, w.normalization, images, rt=rt)
        stds[run.spec.label] = values
        metrics[run.spec.label] = {"std": values, "layers": [n for n, _ in response_layers(w.model)],
                                   "run": str(run.path), "val_error": run.final_val_error,
                                   "first_train_loss": run.curve[0]["train_loss"] if run.curve else None}
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"depths": depths, "images": len(images), "analysis_precision": rt.precision,
             "runs": [r.path.name for r in runs]}
    write_outputs(opts, TITLE, render_responses(opts, metrics, extra), metrics, extra,
                  responses_figures(opts, metrics, extra))


def responses_figures(opts: Options, metrics: dict, config: dict) -> list[Path]:
    """Fig. 7: each net's response stds in layer order and sorted, from the report's metrics."""
    return [responses_figure({label: m["std"] for label, m in metrics.items()},
                             opts.out_dir / "layer_responses.png")]


def render_responses(opts: Options, metrics: dict, config: dict) -> list[str]:
    depths = [d for d in (opts.depths or DEPTHS[opts.budget])]
    stds = {label: m["std"] for label, m in metrics.items()}
    rows = [[label, len(v), f"{statistics.mean(v):.3f}", f"{max(v):.3f}", f"{statistics.median(v):.3f}",
             metrics[label]["val_error"]] for label, v in stds.items()]
    not_run = [d for d in (20, 56, 110) if d not in depths]
    body = [
        "Fig. 7 of the paper: std of the responses of each 3x3 layer (the outputs of BN, before the ReLU and the "
        f"addition) on CIFAR-10. Paper: {paper.FIG7}.", "",
        *protocol_lines(opts, runs=len(metrics)),
        f"- Images: {config.get('images')} validation images (a seeded random subset), the trained nets' final "
        f"weights in eval mode ({analysis_precision(opts, config)}).",
        "- std of a layer: per-channel std over images and positions, averaged over the layer's channels; the "
        "stem conv is left out (hooks on every block's bn1 and bn2).", "",
        table(["net", "3x3 layers", "mean std", "max std", "median std", "val error %"], rows), "",
    ]
    for d in depths:
        p, r = stds.get(f"plain-{d}"), stds.get(f"ResNet-{d}")
        if p and r:
            smaller = sum(a < b for a, b in zip(r, p))
            body.append(f"- depth {d}: the ResNet's response is smaller than the plain net's at {smaller} of "
                        f"{len(r)} layers (mean {statistics.mean(r):.3f} vs {statistics.mean(p):.3f}).")
    res = [(d, stds[f"ResNet-{d}"]) for d in depths if f"ResNet-{d}" in stds]
    if len(res) > 1:
        body.append("- ResNets by depth, mean std: " + ", ".join(f"ResNet-{d} {statistics.mean(v):.3f}"
                                                                 for d, v in res) + ".")
    notes = near_chance_notes([(label, m.get("val_error"), m.get("first_train_loss")) for label, m in metrics.items()])
    if notes:
        body += ["", *notes]
    if not_run:
        body += ["", f"Not run at this budget: depth {', '.join(map(str, not_run))} (plain and ResNet)."]
    spread = ("- Spread: the values compared are the layers of one trained net per depth (one seed each), so the test "
              "is over layers; the seed-to-seed spread of response std was not measured.")
    return body + ["", *verdict_section(response_verdicts(stds, depths), [spread])]


def response_verdicts(stds: dict[str, list[float]], depths) -> list:
    """Fig. 7's two-part claim: ResNets respond less than their plain twins, and deeper ResNets less again."""
    verdicts = []
    for d in depths:
        claim = f"ResNet-{d} responds less than plain-{d} (std of the 3x3 layers' responses)"
        if f"plain-{d}" in stds and f"ResNet-{d}" in stds:
            verdicts.append(verdict(claim, compare(Sample(f"ResNet-{d}", stds[f"ResNet-{d}"], unit="layer"),
                                                   Sample(f"plain-{d}", stds[f"plain-{d}"], unit="layer"),
                                                   digits=3)))
        else:
            verdicts.append(not_tested(claim, f"plain-{d} and ResNet-{d} not both measured"))
    res = [d for d in depths if f"ResNet-{d}" in stds]
    claim = f"Deeper ResNets respond less than shallower ones, ResNet-{'/'.join(map(str, res))}"
    if len(res) >= 2:
        verdicts.append(verdict(claim, ordering([Sample(f"ResNet-{d}", stds[f"ResNet-{d}"], unit="layer")
                                                 for d in reversed(res)], digits=3)))
    else:
        verdicts.append(not_tested(claim, "one ResNet depth only"))
    return verdicts


def analysis_precision(opts: Options, config: dict) -> str:
    """The precision the analysis ran in, as recorded in ``config.json``; reports written before it was recorded say
    so (the text must not depend on the machine that re-renders it)."""
    if config.get("analysis_precision"):
        return config["analysis_precision"]
    return f"not recorded (`--precision {opts.precision}`; the report predates the record)"
