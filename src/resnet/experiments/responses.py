"""Fig. 7: standard deviation of the responses of every 3x3 layer (after BN, before the ReLU / the addition).

In a basic block the responses are the outputs of ``bn1`` (before its ReLU) and ``bn2`` (before the shortcut is
added): forward hooks on those two modules of every block. The stem's 3x3 conv is not a residual layer and is left
out. The std of a layer is the std of each channel over the images and positions, averaged over the channels,
measured on the validation images with the trained net in eval mode.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import torch

from ..data.sources import data_source
from ..models import ResNet
from ..reporting.plots import responses_figure
from ..reporting.report import near_chance_notes, protocol_lines, table, write_outputs
from ..reporting.verdicts import Sample, Verdict, compare, not_tested, ordering, verdict, verdict_section
from ..runs.records import read_analysis, record_grid
from ..runs.spec import Options, RunSpec
from ..runs.store import ensure_runs
from ..runtime import resolve_runtime
from . import paper
from .cifar import campaign_protocol_lines

DEPTHS = {"smoke": (20,), "short": (20, 56, 110), "medium": (20, 56, 110), "paper": (20, 56, 110),
          "fast-32k": (20, 56, 110)}
# Beside a p-value whose samples are the layers (or blocks) of one net: they are not independent draws.
ONE_NET = "; the samples are the {unit}s of one net per side, not independent draws"


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


def recorded_analyses(opts: Options, depths) -> dict:
    """``--records``: label -> [(run, its analysis.json)] of every recorded seed of the plain and residual nets at
    ``depths`` whose record holds the analyses of its last weights (``resnet campaign`` writes them), lowest seed
    first; nets with none are left out."""
    grid = record_grid({f"{fam}{d}": RunSpec(f"{fam}{d}") for d in depths for fam in ("plain", "resnet")}, opts,
                       Path(opts.records))
    out = {}
    for runs in grid.values():
        analysed = [(run, a) for run in runs if (a := read_analysis(run.path)) is not None]
        if analysed:
            out[analysed[0][0].spec.label] = analysed
    return out


def first_train_loss(run) -> float | None:
    return run.curve[0].get("train_loss") if run.curve else None


def recorded_responses(opts: Options, depths) -> None:
    """Fig. 7 from the campaign's records: the first seed's layer responses drawn, every seed's mean response kept for
    the across-seed test. Nothing is trained or measured."""
    metrics, images = {}, None
    for label, analysed in recorded_analyses(opts, depths).items():
        run, first = analysed[0]
        images = first["images"]
        metrics[label] = {"std": first["layer_std"], "layers": first["layers"], "run": run.path.name,
                          "val_error": run.final_val_error, "first_train_loss": first_train_loss(run),
                          "seeds": [r.spec.seed for r, _ in analysed],
                          "mean_std": [statistics.mean(a["layer_std"]) for _, a in analysed],
                          "runs": [r.path.name for r, _ in analysed]}
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"depths": depths, "images": images, "analysis_precision": "fp32",
             "runs": [name for m in metrics.values() for name in m["runs"]]}
    write_outputs(opts, TITLE, render_responses(opts, metrics, extra), metrics, extra,
                  responses_figures(opts, metrics, extra))


def layer_responses(opts: Options) -> None:
    depths = opts.depths or DEPTHS[opts.budget]
    if opts.records:
        return recorded_responses(opts, depths)
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
    header = ["net", "3x3 layers", "mean std", "max std", "median std", "val error %"]
    if opts.records:
        header.append("seeds (mean std of each)")
        for row, m in zip(rows, metrics.values()):
            row.append(", ".join(f"{s}: {v:.3f}" for s, v in zip(m["seeds"], m["mean_std"])))
    not_run = [d for d in (20, 56, 110) if d not in depths]
    body = [
        "Fig. 7 of the paper: std of the responses of each 3x3 layer (the outputs of BN, before the ReLU and the "
        f"addition) on CIFAR-10. Paper: {paper.FIG7}.", "",
        *analysis_protocol_lines(opts, config, len(metrics)),
        "- std of a layer: per-channel std over images and positions, averaged over the layer's channels; the "
        "stem conv is left out (hooks on every block's bn1 and bn2).", "",
        table(header, rows), "",
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
    if opts.records:
        missing = [f"{fam}-{d}" for d in depths for fam in ("plain", "ResNet") if f"{fam}-{d}" not in metrics]
        if missing:
            body += ["", f"Not yet recorded with its analyses at this budget: {', '.join(missing)}."]
        seed_means = {label: m["mean_std"] for label, m in metrics.items()}
        return body + ["", SAMPLES_NOTE, "", *verdict_section(response_verdicts(stds, depths, seed_means),
                                                               rule=opts.plan.verdict_rule)]
    spread = ("- Spread: the values compared are the layers of one trained net per depth (one seed each), so the test "
              "is over layers; the seed-to-seed spread of response std was not measured.")
    return body + ["", *verdict_section(response_verdicts(stds, depths), [spread])]


SAMPLES_NOTE = ("Where each net compared has two or more recorded seeds, the verdict compares them across seeds (one "
                "value per seed: its mean over layers or blocks), under the two-net rule below. Otherwise the samples "
                "are the layers (or blocks) of one net, which the evidence says next to its p-value: those are not "
                "independent draws, and the seed-to-seed spread is not measured.")


def across_seeds(*labels: str, seed_means: dict | None) -> bool:
    return bool(seed_means) and all(len(seed_means.get(label) or ()) >= 2 for label in labels)


def one_net(v: Verdict, unit: str = "layer") -> Verdict:
    """A verdict whose samples are the layers (blocks) of one net: its evidence says so next to the p-value."""
    return replace(v, evidence=v.evidence + ONE_NET.format(unit=unit))


def response_verdicts(stds: dict[str, list[float]], depths, seed_means: dict[str, list[float]] | None = None) -> list:
    """Fig. 7's two-part claim: ResNets respond less than their plain twins, and deeper ResNets less again. Across
    seeds (``seed_means``: each seed's mean response) where every net compared has two or more, else over layers."""
    def sample(label: str, seeds: bool) -> Sample:
        return Sample(label, seed_means[label]) if seeds else Sample(label, stds[label], unit="layer")

    verdicts = []
    for d in depths:
        claim = f"ResNet-{d} responds less than plain-{d} (std of the 3x3 layers' responses)"
        res, plain = f"ResNet-{d}", f"plain-{d}"
        if plain in stds and res in stds:
            seeds = across_seeds(res, plain, seed_means=seed_means)
            finding = compare(sample(res, seeds), sample(plain, seeds), digits=3)
            v = verdict(claim, finding)
            verdicts.append(v if seeds or seed_means is None else one_net(v))
        else:
            verdicts.append(not_tested(claim, f"{plain} and {res} not both measured"))
    res = [d for d in depths if f"ResNet-{d}" in stds]
    claim = f"Deeper ResNets respond less than shallower ones, ResNet-{'/'.join(map(str, res))}"
    if len(res) >= 2:
        labels = [f"ResNet-{d}" for d in reversed(res)]
        seeds = across_seeds(*labels, seed_means=seed_means)
        v = verdict(claim, ordering([sample(label, seeds) for label in labels], digits=3))
        verdicts.append(v if seeds or seed_means is None else one_net(v))
    else:
        verdicts.append(not_tested(claim, "one ResNet depth only"))
    return verdicts


def analysis_protocol_lines(opts: Options, config: dict, nets: int) -> list[str]:
    """The data, budget and runs of an analysis report: of the campaign's records (``--records``), or of the runs
    this report trained."""
    if opts.records:
        return [*campaign_protocol_lines(opts, len(config.get("runs") or [])),
                f"- Images: all {config.get('images')} validation images; each recorded run's last weights in eval "
                "mode (fp32), measured when the run finished (`analysis.json` in its record)."]
    return [*protocol_lines(opts, runs=nets),
            f"- Images: {config.get('images')} validation images (a seeded random subset), the trained nets' final "
            f"weights in eval mode ({analysis_precision(opts, config)})."]


def analysis_precision(opts: Options, config: dict) -> str:
    """The precision the analysis ran in, as recorded in ``config.json``; reports written before it was recorded say
    so (the text must not depend on the machine that re-renders it)."""
    if config.get("analysis_precision"):
        return config["analysis_precision"]
    return f"not recorded (`--precision {opts.precision}`; the report predates the record)"
