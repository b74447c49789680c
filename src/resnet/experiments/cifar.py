"""The CIFAR-10 training experiments: Table 6 (depth), Fig. 6 (degradation) and Table 3's shortcut study at CIFAR
scale. All three read the shared runs of ``runs.py``; each report is rendered from its metrics alone
(``render_*``), so that it can be written again from a ``metrics.json`` (``resnet reproduce NAME --from-metrics``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..models import build_model, count_params, model_label
from ..reporting.plots import degradation_figure, final_error_figure
from ..reporting.report import mean_std, near_chance_notes, protocol_lines, run_summary, table, write_outputs
from ..reporting.verdicts import (Sample, compare, not_tested, ordering, rule_spread, spread_line, verdict,
                                  verdict_section)
from ..runs.records import CHECKED_IN_DATA, record_grid
from ..runs.spec import Options, RunSpec
from ..runs.store import ensure_runs
from . import paper

# Default depths per budget; --depths overrides them. smoke: the smallest nets, to prove the pipeline.
DEPTHS = {
    "cifar-depth": {"smoke": (20,), "short": (20, 32, 44, 56, 110), "medium": (20, 32, 44, 56, 110),
                    "paper": (20, 32, 44, 56, 110, 1202), "fast-32k": (20, 32, 44, 56, 110)},
    "cifar-degradation": {"smoke": (20, 32), "short": (20, 32, 44, 56), "medium": (20, 32, 44, 56),
                          "paper": (20, 32, 44, 56), "fast-32k": (20, 32, 44, 56, 110)},
    "cifar-shortcuts": {"smoke": (20,), "short": (20, 56), "medium": (20, 56), "paper": (20, 56),
                        "fast-32k": (20,)},
}
TITLES = {"cifar-depth": "Table 6: CIFAR-10 error against depth",
          "cifar-degradation": "Fig. 6: the degradation problem on CIFAR-10"}


def depths_for(opts: Options) -> tuple[int, ...]:
    return opts.depths or DEPTHS[opts.name].get(opts.budget) or DEPTHS[opts.name]["paper"]


def params_of(model: str, shortcut: str | None = None) -> int:
    return count_params(build_model(model, shortcut=shortcut))


def _train_errors(curves: list[list[dict]]) -> list[float]:
    """Each run's training error over its last evaluation interval (augmented batches, as the trainer logs it)."""
    return [c[-1]["train_error"] for c in curves if c]  # a record kept without its curve has none


# ---------------------------------------------------------------------------------------------------------------------
# Table 6


def cifar_depth(opts: Options) -> None:
    """Table 6: ResNet-20/32/44/56/110(/1202): validation error, mean +/- std over seeds, next to the paper's."""
    depths = depths_for(opts)
    # From records (the campaign's report), the plain nets of Fig. 6 are rows too, where they were trained.
    families = ("resnet", "plain") if opts.records else ("resnet",)
    grid = gather({f"{f}{d}": [RunSpec(f"{f}{d}", seed=s) for s in seeds(opts)] for f in families for d in depths},
                  opts)
    metrics = {name: {"params": params_of(name), "val_error": [r.final_val_error for r in rs],
                      "best_val_error": [r.best_val_error for r in rs],
                      "val_error_10view": [r.final.val_error_tta for r in rs],
                      "runs": [str(r.path) for r in rs], "curves": [r.curve for r in rs]}
               for name, rs in grid.items()}
    _mkdir(opts)
    extra = {"depths": depths, "runs": {name: [r.path.name for r in rs] for name, rs in grid.items()}}
    write_outputs(opts, TITLES[opts.name], render_depth(opts, metrics, extra), metrics, extra,
                  depth_figures(opts, metrics, extra))


def depth_figures(opts: Options, metrics: dict, config: dict) -> list[Path]:
    """The ResNets' curves, one colour per depth (the first seed that has a curve), from the report's metrics."""
    curves = {d: _first_curve(metrics[f"resnet{d}"]["curves"]) for d in config["depths"] if f"resnet{d}" in metrics}
    return [degradation_figure({"ResNet": curves}, opts.out_dir / "curves.png")]


def render_depth(opts: Options, metrics: dict, config: dict) -> list[str]:
    if opts.records:
        return render_campaign_depth(opts, metrics)
    depths = [d for d in depths_for(opts) if f"resnet{d}" in metrics]
    # The 10-view test (beyond the paper) where the recipe ran it on the last weights; older metrics lack the key.
    ten_view = {d: [e for e in metrics[f"resnet{d}"].get("val_error_10view") or [] if e is not None] for d in depths}
    shown = any(ten_view.values())
    rows = []
    for d in depths:
        m = metrics[f"resnet{d}"]
        p = paper.CIFAR_TABLE6.get(d, {})
        rows.append([f"ResNet-{d}", f"{m['params'] / 1e6:.2f}M", p.get("params"), mean_std(m["val_error"]),
                     *([mean_std(ten_view[d]) if ten_view[d] else "-"] if shown else []),
                     mean_std(m["best_val_error"]), min(m["val_error"]), mean_std(_train_errors(m["curves"])),
                     p.get("test_error"), paper.CIFAR_AKAMASTER.get(d)])
    n_runs = sum(len(metrics[f"resnet{d}"]["val_error"]) for d in depths)
    not_run = [d for d in paper.CIFAR_TABLE6 if d not in depths]
    body = [
        "Table 6 of the paper (CIFAR-10, option A shortcuts): error against depth.", "",
        *protocol_lines(opts, runs=n_runs), "",
        table(["model", "params (ours)", "params (paper)", f"val error % (final, mean +/- std over {opts.seeds})",
               *(["val error % (10-view, final)"] if shown else []),
               "val error % (best evaluation)", "val error % (min over seeds)", "final training error %",
               "paper test error %", "akamaster test error %"], rows), "",
        "Our errors are on the 5k held-out validation images after the budget's iterations; the paper's are on the "
        "official 10k test images after 64k iterations. `best evaluation` is the lowest error among the run's "
        "evaluations (picked on the same validation images, so optimistic).",
    ]
    gaps = [f"ResNet-{d} {mean_error(metrics[f'resnet{d}']['val_error']) - paper.CIFAR_TABLE6[d]['test_error']:+.2f}"
            for d in depths if d in paper.CIFAR_TABLE6]
    if gaps:
        shorter = "" if opts.plan.name == "paper" else (f" and trains {opts.plan.iterations:,} iterations, not the "
                                                         "paper's 64,000")
        body += ["", f"Level against the paper's Table 6 (points, ours minus the paper's): {', '.join(gaps)}. This "
                     f"report measures a held-out part of the training images{shorter}, so the levels are not the "
                     "paper's test errors."]
    if shown:
        body += ["", TEN_VIEW_NOTE]
    if not_run:
        body += ["", f"Not run at this budget: ResNet-{', ResNet-'.join(map(str, not_run))} "
                     f"(depths run: {', '.join(map(str, depths))})."]
    notes = near_chance_notes([run_summary(f"ResNet-{d}", e, c) for d in depths
                               for e, c in zip(metrics[f"resnet{d}"]["val_error"], metrics[f"resnet{d}"]["curves"])])
    if notes:
        body += ["", *notes]
    if opts.seeds == 1:
        body += ["", "One seed per depth: no standard deviation is available (the paper's 110-layer row is a mean "
                     "over 5 runs)."]
    return body + ["", *verdict_section(depth_verdicts(opts, metrics, depths),
                                        [spread_line([f"resnet{d}" for d in depths], opts.plan)],
                                        rule=opts.plan.verdict_rule)]


TEN_VIEW_NOTE = ("The 10-view test (beyond the paper; the paper's CIFAR protocol is the single 32x32 image) is the "
                 "mean of the softmax over the image, four diagonal 1-pixel shifts of it and the mirror image of each "
                 "(`--tta shift`), on the last weights; the verdicts use the single-image error.")


def render_campaign_depth(opts: Options, metrics: dict) -> list[str]:
    """Table 6 from the recorded runs of one budget: every net with however many seeds it has, mean +/- std where
    there are two or more, the paper's number beside each, and the level against the paper's in one sentence."""
    nets = [(f, d) for f in ("resnet", "plain") for d in depths_for(opts) if f"{f}{d}" in metrics]
    names = [f"{f}{d}" for f, d in nets]
    rows = []
    for name, (family, d) in zip(names, nets):
        m = metrics[name]
        ten = [e for e in m.get("val_error_10view") or [] if e is not None]
        ours_paper = paper.CIFAR_TABLE6.get(d, {}).get("test_error") if family == "resnet" else None
        rows.append([model_label(name), f"{m['params']:,}", len(m["val_error"]), mean_std(m["val_error"]),
                     mean_std(ten) if ten else "-", mean_std(_train_errors(m["curves"])),
                     ours_paper if ours_paper is not None else ("curves only (Fig. 6)" if family == "plain" else "-")])
    missing = [model_label(f"{f}{d}") for f in ("resnet", "plain") for d in depths_for(opts)
               if f"{f}{d}" not in metrics]
    level = [(metrics[f"resnet{d}"]["val_error"], paper.CIFAR_TABLE6[d]["test_error"])
             for d in depths_for(opts) if f"resnet{d}" in metrics and d in paper.CIFAR_TABLE6]
    gaps = [sum(v) / len(v) - p for v, p in level]
    body = [
        "Table 6 of the paper (CIFAR-10, option A shortcuts): error against depth; the plain nets of Fig. 6 beside "
        "them.", "",
        *campaign_protocol_lines(opts, sum(len(metrics[n]["val_error"]) for n in names)),
        "", table(["net", "params", "seeds", "val error % (single image, mean +/- std)", "val error % (10-view)",
                   "final training error %", "paper test error %"], rows), "",
    ]
    if gaps:
        body += [f"Our ResNets sit {min(gaps):.2f} to {max(gaps):.2f} points above the paper's Table 6. Three things "
                 "differ: the images (JPEG q75 re-encodings here, the lossless originals there; the effect of the "
                 "re-encoding alone is not measured here), the split (5k images held out of training here, the "
                 "official 10k test images there) and the schedule (the recipe and budget above; the paper's is 64k "
                 "iterations of Sec. 4.2)."]
    body += ["", TEN_VIEW_NOTE]
    if missing:
        body += ["", f"Not yet recorded at this budget: {', '.join(missing)}."]
    notes = near_chance_notes([run_summary(model_label(n), e, c) for n in names
                               for e, c in zip(metrics[n]["val_error"], metrics[n]["curves"])])
    if notes:
        body += ["", *notes]
    depths = [d for d in depths_for(opts) if f"resnet{d}" in metrics]
    return body + ["", *verdict_section(depth_verdicts(opts, metrics, depths), rule=opts.plan.verdict_rule)]


def campaign_protocol_lines(opts: Options, runs: int) -> list[str]:
    return [f"- Data: the project's campaign trained every run checked in under `results/records` on "
            f"{CHECKED_IN_DATA}. Errors are validation errors on the 5k; the paper's are test errors on the official "
            "10k test images (lossless originals).",
            f"- Budget: `{opts.plan.name}` -- {opts.plan.note}.",
            f"- Runs: {runs} finished run(s) recorded in `{opts.records}` at this budget, every seed there (the seeds "
            "column); each run's `config.json` and `metrics.jsonl` are there."]


NEAR_CHANCE = 80.0  # final validation error (%) of a run that did not train (10 classes: chance is 90%)


def untrained(metrics: dict, names: list[str], key: str = "val_error") -> list[str]:
    """The nets among ``names`` with a run that ended near chance: a claim that involves them is not tested."""
    return [model_label(n) for n in names if any(e is not None and e >= NEAR_CHANCE for e in metrics[n].get(key) or [])]


def judged(claim: str, names: list[str], metrics: dict, finding) -> object:
    """``verdict(claim, finding())`` unless a net of the claim did not train, which the report then says instead."""
    failed = untrained(metrics, names, "val_error" if "val_error" in metrics[names[0]] else "final_val_error")
    if failed:
        return not_tested(claim, f"{', '.join(failed)} did not train at this budget (a run ended near chance, "
                                 f"{NEAR_CHANCE:g}% validation error or more), so the comparison says nothing of depth")
    return verdict(claim, finding())


def _seeds_txt(opts: Options, metrics: dict, names: list[str], key: str) -> str:
    counts = sorted({len(metrics[n][key]) for n in names})
    if len(counts) == 1:
        return f"{counts[0]} seed(s) each"
    return "seeds: " + ", ".join(f"{model_label(n)} {len(metrics[n][key])}" for n in names)


def depth_verdicts(opts: Options, metrics: dict, depths: list[int]) -> list:
    spread = rule_spread("resnet20", opts.plan)
    ordered = [d for d in depths if d != 1202]
    names = [f"resnet{d}" for d in ordered]
    verdicts = []
    claim = ("Deeper ResNets reach lower error (Table 6: " + " / ".join(
        f"{paper.CIFAR_TABLE6[d]['test_error']}%" for d in (20, 32, 44, 56, 110)) + " for ResNet-20/32/44/56/110), "
             f"final validation error over ResNet-{'/'.join(map(str, ordered))}, "
             + (_seeds_txt(opts, metrics, names, "val_error") if opts.records else f"{opts.seeds} seed(s) each"))
    if len(ordered) >= 2:
        samples = [Sample(f"ResNet-{d}", metrics[f"resnet{d}"]["val_error"]) for d in reversed(ordered)]
        verdicts.append(judged(claim, names, metrics, lambda: ordering(samples, spread)))
    else:
        verdicts.append(not_tested(claim, "one depth only"))
    claim_1202 = "ResNet-1202 has higher error than ResNet-110 (7.93% vs 6.43%: overfitting, per the paper)"
    if 110 in depths and 1202 in depths:
        verdicts.append(judged(claim_1202, ["resnet110", "resnet1202"], metrics,
                               lambda: compare(Sample("ResNet-110", metrics["resnet110"]["val_error"]),
                                               Sample("ResNet-1202", metrics["resnet1202"]["val_error"]), spread)))
    else:
        verdicts.append(not_tested(claim_1202, "ResNet-110 and ResNet-1202 not both run"))
    if opts.budget != "paper":
        verdicts.append(not_tested("The paper's error levels (6.43-8.75% test error)",
                                   f"the `{opts.budget}` budget trains {opts.plan.iterations} of the paper's 64,000 "
                                   "iterations, so the levels are not comparable; the table shows both"))
    return verdicts


# ---------------------------------------------------------------------------------------------------------------------
# Fig. 6


def cifar_degradation(opts: Options) -> None:
    """Fig. 6: plain vs residual 20/32/44/56(/110); the deeper plain net trains worse, the deeper ResNet better."""
    depths = depths_for(opts)
    families = {"plain": "plain", "ResNet": "resnet"}
    grid = gather({(fam, d): [RunSpec(f"{prefix}{d}", seed=s) for s in seeds(opts)]
                   for d in depths for fam, prefix in families.items()}, opts)
    runs = {fam: {d: grid[(fam, d)] for d in depths if (fam, d) in grid} for fam in families}
    metrics = {f"{fam}{d}": {"final_train_error": [r.final_train_error for r in rs if r.curve],
                             "final_val_error": [r.final_val_error for r in rs],
                             "curves": [r.curve for r in rs]} for fam in runs for d, rs in runs[fam].items()}
    _mkdir(opts)
    extra = {"depths": depths, "runs": {f"{fam}{d}": [r.path.name for r in rs]
                                        for fam in runs for d, rs in runs[fam].items()}}
    write_outputs(opts, TITLES[opts.name], render_degradation(opts, metrics, extra), metrics, extra,
                  degradation_figures(opts, metrics, extra))


def degradation_figures(opts: Options, metrics: dict, config: dict) -> list[Path]:
    """Fig. 6 (plain left, ResNet right; the first seed's curves) and the final training error against depth, from
    the report's metrics. From the campaign's records the y-axis runs from 0 to 20%, as in the paper."""
    nets = {fam: [d for d in config["depths"] if f"{fam}{d}" in metrics] for fam in ("plain", "ResNet")}
    fig = degradation_figure({fam: {d: _first_curve(metrics[f"{fam}{d}"]["curves"]) for d in ds}
                              for fam, ds in nets.items()}, opts.out_dir / "degradation.png", val_label="val",
                             ylim=(0, 20) if opts.records else None)
    train_err = {f"{fam} (training)": {d: mean_error(metrics[f"{fam}{d}"]["final_train_error"]) for d in ds
                                       if metrics[f"{fam}{d}"]["final_train_error"]} for fam, ds in nets.items()}
    fig2 = final_error_figure(train_err, opts.out_dir / "final_train_error.png", "final training error (%)")
    return [fig, fig2]


def render_degradation(opts: Options, metrics: dict, config: dict) -> list[str]:
    families = ("plain", "ResNet")
    if opts.records:  # every net recorded so far, each with its seeds
        depths = [d for d in depths_for(opts) if f"plain{d}" in metrics or f"ResNet{d}" in metrics]
    else:
        depths = [d for d in depths_for(opts) if f"plain{d}" in metrics and f"ResNet{d}" in metrics]
    nets = [(fam, d) for fam in families for d in depths if f"{fam}{d}" in metrics]
    rows = [[f"{fam}-{d}", *([len(metrics[f"{fam}{d}"]["final_val_error"])] if opts.records else []),
             mean_std(metrics[f"{fam}{d}"]["final_train_error"]), mean_std(metrics[f"{fam}{d}"]["final_val_error"])]
            for fam, d in nets]
    n_runs = sum(len(metrics[f"{fam}{d}"]["final_val_error"]) for fam, d in nets)
    interval = max(1, opts.plan.iterations // opts.plan.evaluations)
    body = [
        "Fig. 6 of the paper: training (dashed) and validation (bold) error of plain and residual CIFAR-10 nets.",
        f"Paper: {paper.FIG6}.", "",
        *(campaign_protocol_lines(opts, n_runs) if opts.records else protocol_lines(opts, runs=n_runs)), "",
        table(["net", *(["seeds"] if opts.records else []), "final training error % (last evaluation interval)",
               "final val error %"], rows), "",
        "Training error is the error on the augmented training batches of the last evaluation interval "
        + (f"({interval} iterations), as logged by the trainer." if not opts.records else
           "(500 iterations; 2,000 for the runs recorded before the campaign evaluated every 500), as logged by the "
           "trainer; the figure draws seed 0 of each net.")
    ]
    if opts.records:
        missing = [f"{fam}-{d}" for fam in families for d in depths_for(opts) if f"{fam}{d}" not in metrics]
        if missing:
            body += ["", f"Not yet recorded at this budget: {', '.join(missing)}."]
    notes = near_chance_notes([run_summary(f"{fam}-{d}", e, c) for fam, d in nets
                               for e, c in zip(metrics[f"{fam}{d}"]["final_val_error"], metrics[f"{fam}{d}"]["curves"])])
    if notes:
        body += ["", *notes]
    models = [f"{p}{d}" for p in ("plain", "resnet") for d in depths]
    spread = spread_line(models, opts.plan)
    if opts.plan.verdict_rule == "spread":
        spread += (" The spread was measured on validation error; training error (the last interval's augmented "
                   "batches) is held to the same figure.")
    return body + ["", *verdict_section(degradation_verdicts(opts, metrics, depths), [spread],
                                        rule=opts.plan.verdict_rule)]


def degradation_verdicts(opts: Options, metrics: dict, depths: list[int]) -> list:
    spread = rule_spread("resnet20", opts.plan)
    verdicts = []

    def chain(fam: str, key: str, deeper_higher: bool):
        samples = [Sample(f"{fam}-{d}", metrics[f"{fam}{d}"][key]) for d in ds[fam]]
        return ordering(samples if deeper_higher else samples[::-1], spread)

    def seeds_of(fam: str) -> str:
        names = [f"{fam}{d}" for d in ds[fam]]
        if not opts.records:
            return f"{opts.seeds} seed(s) each"
        return _seeds_txt(opts, metrics, names, "final_val_error")

    ds = {fam: [d for d in depths if f"{fam}{d}" in metrics] for fam in ("plain", "ResNet")}
    for fam, higher, what in (("plain", True, "higher"), ("ResNet", False, "lower")):
        names = [f"{fam}{d}" for d in ds[fam]]
        label = "ResNets" if fam == "ResNet" else "plain nets"
        tail = f"{fam}-{'/'.join(map(str, ds[fam]))}"
        if len(names) < 2:
            verdicts.append(not_tested(f"Error against depth, {label}", "fewer than two depths recorded"))
            continue
        extra = " (the degradation problem)" if fam == "plain" else ""
        verdicts += [
            judged(f"Deeper {label} have {what} training error{extra}, {tail}, {seeds_of(fam)}", names, metrics,
                   lambda fam=fam, higher=higher: chain(fam, "final_train_error", higher)),
            judged(f"Deeper {label} have {what} validation error, {tail}", names, metrics,
                   lambda fam=fam, higher=higher: chain(fam, "final_val_error", higher)),
        ]
    for d in depths:
        if f"ResNet{d}" in metrics and f"plain{d}" in metrics:
            verdicts.append(judged(
                f"ResNet-{d} has lower training error than plain-{d} (Fig. 6, left against right)",
                [f"ResNet{d}", f"plain{d}"], metrics,
                lambda d=d: compare(Sample(f"ResNet-{d}", metrics[f"ResNet{d}"]["final_train_error"]),
                                    Sample(f"plain-{d}", metrics[f"plain{d}"]["final_train_error"]), spread)))
    claim_110 = "plain-110 has more than 60% error"
    if "plain110" in metrics:
        verdicts.append(verdict(claim_110, compare(Sample("the paper's 60%", 60.0),
                                                   Sample("plain-110", metrics["plain110"]["final_val_error"]),
                                                   spread)))
    else:
        verdicts.append(not_tested(claim_110, "plain-110 not run"))
    return verdicts


def gather(grid: dict, opts: Options) -> dict:
    """key -> its runs. With ``--records``: every recorded seed of each key's net (keys with none left out), nothing
    trained; otherwise seeds 0..K-1, trained now or reused (``train_grid``)."""
    if opts.records:
        return record_grid({k: specs[0] for k, specs in grid.items()}, opts, Path(opts.records))
    return train_grid(grid, opts)


def _first_curve(curves: list[list[dict]]) -> list[dict]:
    """The curve of the lowest seed that has one (a record kept without its curve has none)."""
    return next((c for c in curves if c), [])


def train_grid(grid: dict, opts: Options) -> dict:
    """Train (or reuse) every run of ``grid`` (key -> specs) in one go, so that ``--jobs`` can run them side by
    side; the shallowest and deepest nets first, so that an interrupted sweep still holds its two ends."""
    specs = [s for ss in grid.values() for s in ss]
    depths = sorted({s.depth for s in specs})
    rank = {d: i for i, d in enumerate([*depths[:1], *depths[-1:], *depths[1:-1]])}
    order = sorted(specs, key=lambda s: (s.seed, rank[s.depth]))
    by_spec = dict(zip(order, ensure_runs(order, opts)))
    return {k: [by_spec[s] for s in ss] for k, ss in grid.items()}


def mean_error(values: list[float]) -> float:
    return sum(values) / len(values)


def _mkdir(opts: Options) -> None:
    opts.out_dir.mkdir(parents=True, exist_ok=True)


def seeds(opts: Options) -> range:
    if opts.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {opts.seeds}")
    return range(opts.seeds)
