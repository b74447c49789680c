"""The CIFAR-10 training experiments: Table 6 (depth), Fig. 6 (degradation) and Table 3's shortcut study at CIFAR
scale. All three read the shared runs of ``runs.py``."""

from __future__ import annotations

import statistics

from ..models import build_model, count_params
from . import paper
from .plots import degradation_figure, final_error_figure
from .report import mean_std, near_chance_notes, protocol_lines, table, write_outputs
from .runs import Options, RunSpec, ensure_runs, seeds

# Default depths per budget; --depths overrides them. smoke: the smallest nets, to prove the pipeline.
DEPTHS = {
    "cifar-depth": {"smoke": (20,), "short": (20, 32, 44, 56, 110), "medium": (20, 32, 44, 56, 110),
                    "paper": (20, 32, 44, 56, 110, 1202)},
    "cifar-degradation": {"smoke": (20, 32), "short": (20, 32, 44, 56), "medium": (20, 32, 44, 56),
                          "paper": (20, 32, 44, 56)},
    "cifar-shortcuts": {"smoke": (20,), "short": (20, 56), "medium": (20, 56), "paper": (20, 56)},
}


def depths_for(opts: Options) -> tuple[int, ...]:
    return opts.depths or DEPTHS[opts.name][opts.budget]


def params_of(model: str, shortcut: str | None = None) -> int:
    return count_params(build_model(model, shortcut=shortcut))


def cifar_depth(opts: Options) -> None:
    """Table 6: ResNet-20/32/44/56/110(/1202): validation error, mean +/- std over seeds, next to the paper's."""
    depths = depths_for(opts)
    runs = train_grid({d: [RunSpec(f"resnet{d}", seed=s) for s in seeds(opts)] for d in depths}, opts)
    rows, metrics = [], {}
    for d in depths:
        final = [r.final_val_error for r in runs[d]]
        best = [r.final["best_val_error"] for r in runs[d]]
        p = paper.CIFAR_TABLE6.get(d, {})
        rows.append([f"ResNet-{d}", f"{params_of(f'resnet{d}') / 1e6:.2f}M", p.get("params"), mean_std(final),
                     mean_std(best), min(final), mean_std([r.final_train_error for r in runs[d]]),
                     p.get("test_error"), paper.CIFAR_AKAMASTER.get(d)])
        metrics[f"resnet{d}"] = {"params": params_of(f"resnet{d}"), "val_error": final, "best_val_error": best,
                                 "runs": [str(r.path) for r in runs[d]],
                                 "curves": [r.curve for r in runs[d]]}
    not_run = [d for d in paper.CIFAR_TABLE6 if d not in depths]
    curves = {d: runs[d][0].curve for d in depths}
    _mkdir(opts)
    fig = degradation_figure({"ResNet": curves}, opts.out_dir / "curves.png")
    body = [
        "Table 6 of the paper (CIFAR-10, option A shortcuts): error against depth.", "",
        *protocol_lines(opts, runs=sum(len(r) for r in runs.values())), "",
        table(["model", "params (ours)", "params (paper)", f"val error % (final, mean +/- std over {opts.seeds})",
               "val error % (best evaluation)", "val error % (min over seeds)", "final training error %",
               "paper test error %",
               "akamaster test error %"], rows), "",
        "Our errors are on the 5k held-out validation images after the budget's iterations; the paper's are on the "
        "official 10k test images after 64k iterations. `best evaluation` is the lowest error among the run's "
        "evaluations (picked on the same validation images, so optimistic).",
    ]
    if not_run:
        body += ["", f"Not run at this budget: ResNet-{', ResNet-'.join(map(str, not_run))} "
                     f"(depths run: {', '.join(map(str, depths))})."]
    notes = near_chance_notes([r for rs in runs.values() for r in rs])
    if notes:
        body += ["", *notes]
    if opts.seeds == 1:
        body += ["", "One seed per depth: no standard deviation is available (the paper's 110-layer row is a mean "
                     "over 5 runs)."]
    write_outputs(opts, "Table 6: CIFAR-10 error against depth", body, metrics,
                  {"depths": depths, "runs": {d: [r.path.name for r in runs[d]] for d in depths}}, [fig])


def cifar_degradation(opts: Options) -> None:
    """Fig. 6: plain vs residual 20/32/44/56; the deeper plain net trains worse, the deeper ResNet better."""
    depths = depths_for(opts)
    families = {"plain": "plain", "ResNet": "resnet"}
    grid = train_grid({(fam, d): [RunSpec(f"{prefix}{d}", seed=s) for s in seeds(opts)]
                       for d in depths for fam, prefix in families.items()}, opts)
    runs = {fam: {d: grid[(fam, d)] for d in depths} for fam in families}
    _mkdir(opts)
    fig = degradation_figure({fam: {d: rs[0].curve for d, rs in by_depth.items()} for fam, by_depth in runs.items()},
                             opts.out_dir / "degradation.png", val_label="val")
    train_err = {fam: {d: _mean([r.final_train_error for r in rs]) for d, rs in by.items()} for fam, by in runs.items()}
    val_err = {fam: {d: _mean([r.final_val_error for r in rs]) for d, rs in by.items()} for fam, by in runs.items()}
    fig2 = final_error_figure({f"{fam} (training)": train_err[fam] for fam in runs}, opts.out_dir / "final_train_error.png",
                              "final training error (%)")
    rows = [[f"{fam}-{d}", mean_std([r.final_train_error for r in runs[fam][d]]),
             mean_std([r.final_val_error for r in runs[fam][d]])] for fam in runs for d in depths]
    verdicts = []
    for fam, want in (("plain", "higher"), ("ResNet", "lower")):
        e = train_err[fam]
        pairs = list(zip(depths, depths[1:]))
        ups = sum(e[b] > e[a] for a, b in pairs)
        trend = "rises" if e[depths[-1]] > e[depths[0]] else "falls"
        monotone = (ups == len(pairs)) if want == "higher" else (ups == 0)
        agrees = (trend == "rises") == (want == "higher")
        verdicts.append(
            f"- {fam}: final training error {trend} from {fam}-{depths[0]} ({e[depths[0]]:.2f}%) to "
            f"{fam}-{depths[-1]} ({e[depths[-1]]:.2f}%); the paper expects deeper = {want}. "
            + ("Agrees with the paper" + (" (monotone in depth)." if monotone and len(pairs) > 1 else
                                          " between the shallowest and the deepest net, not at every step."
                                          if len(pairs) > 1 else ".")
               if agrees else "**Does not agree with the paper at this budget.**"))
    body = [
        "Fig. 6 of the paper: training (dashed) and validation (bold) error of plain and residual CIFAR-10 nets.",
        f"Paper: {paper.FIG6}.", "",
        *protocol_lines(opts, runs=sum(len(rs) for by in runs.values() for rs in by.values())), "",
        table(["net", "final training error % (last evaluation interval)", "final val error %"], rows), "",
        "The degradation problem (training error, the optimisation difficulty, not overfitting):", "", *verdicts, "",
        "Training error is the error on the augmented training batches of the last evaluation interval "
        f"({max(1, opts.plan.iterations // opts.plan.evaluations)} iterations), as logged by the trainer.",
    ]
    notes = near_chance_notes([r for by in runs.values() for rs in by.values() for r in rs])
    if notes:
        body += ["", *notes]
    metrics = {f"{fam}{d}": {"final_train_error": [r.final_train_error for r in runs[fam][d]],
                             "final_val_error": [r.final_val_error for r in runs[fam][d]],
                             "curves": [r.curve for r in runs[fam][d]]} for fam in runs for d in depths}
    write_outputs(opts, "Fig. 6: the degradation problem on CIFAR-10", body, metrics,
                  {"depths": depths, "runs": {f"{fam}{d}": [r.path.name for r in runs[fam][d]]
                                              for fam in runs for d in depths}}, [fig, fig2])


def cifar_shortcuts(opts: Options) -> None:
    """Table 3 at CIFAR scale: shortcut options A (zero-pad), B (project where the shape changes), C (all project)."""
    depths = depths_for(opts)
    runs = train_grid({(d, o): [RunSpec(f"resnet{d}", shortcut=o, seed=s) for s in seeds(opts)]
                       for d in depths for o in ("A", "B", "C")}, opts)
    _mkdir(opts)
    rows, metrics = [], {}
    for (d, o), rs in runs.items():
        ref = paper.IMAGENET_TABLE3.get(("resnet34", o))
        rows.append([f"ResNet-{d}", o, f"{params_of(f'resnet{d}', o) / 1e6:.3f}M",
                     mean_std([r.final_val_error for r in rs]), mean_std([r.final_train_error for r in rs]),
                     f"{ref[0]:.2f}" if ref else "-"])
        metrics[f"resnet{d}-{o}"] = {"params": params_of(f"resnet{d}", o),
                                     "val_error": [r.final_val_error for r in rs],
                                     "train_error": [r.final_train_error for r in rs], "curves": [r.curve for r in rs]}
    fig = degradation_figure({f"ResNet-{d}": {f"option {o}": runs[(d, o)][0].curve for o in "ABC"} for d in depths},
                             opts.out_dir / "shortcuts.png") if depths else None
    body = [
        "Table 3 of the paper compares the shortcut options on ImageNet ResNet-34 (A: zero-padding identity, "
        "B: projection where dimensions increase, C: all projections) and finds A < B < C in accuracy, by small "
        "margins (25.03 / 24.52 / 24.19 top-1 error, 10-crop). Here the same study at CIFAR scale.", "",
        *protocol_lines(opts, runs=sum(len(r) for r in runs.values())), "",
        table(["model", "shortcut", "params", "val error %", "final training error %",
               "paper ImageNet ResNet-34 top-1 % (Table 3)"], rows), "",
        *[shortcut_order(d, {o: [r.final_val_error for r in runs[(d, o)]] for o in "ABC"}) for d in depths],
        *near_chance_notes([r for rs in runs.values() for r in rs]),
    ]
    write_outputs(opts, "Table 3 at CIFAR scale: shortcut options A/B/C", body, metrics,
                  {"depths": depths, "runs": {f"resnet{d}-{o}": [r.path.name for r in rs] for (d, o), rs in runs.items()}},
                  [fig] if fig else [])


def shortcut_order(depth: int, errors: dict[str, list[float]]) -> str:
    """One line: the options ordered by mean validation error, against the paper's C < B < A, with the seed spread."""
    means = {o: statistics.mean(e) for o, e in errors.items()}
    order = " < ".join(sorted(means, key=means.get))
    spread = max(statistics.stdev(e) if len(e) > 1 else 0.0 for e in errors.values())
    noise = (f"the largest std over seeds is {spread:.2f} points" if spread else
             "one seed per option, so differences of a point or so may be run-to-run noise")
    agree = "as in the paper" if order == "C < B < A" else "the paper's ImageNet order is C < B < A"
    return f"- ResNet-{depth}, options by validation error: {order} ({agree}); {noise}."


def train_grid(grid: dict, opts: Options) -> dict:
    """Train (or reuse) every run of ``grid`` (key -> specs) in one go, so that ``--jobs`` can run them side by
    side; the shallowest and deepest nets first, so that an interrupted sweep still holds its two ends."""
    specs = [s for ss in grid.values() for s in ss]
    depths = sorted({s.depth for s in specs})
    rank = {d: i for i, d in enumerate([*depths[:1], *depths[-1:], *depths[1:-1]])}
    order = sorted(specs, key=lambda s: (s.seed, rank[s.depth]))
    by_spec = dict(zip(order, ensure_runs(order, opts)))
    return {k: [by_spec[s] for s in ss] for k, ss in grid.items()}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _mkdir(opts: Options) -> None:
    opts.out_dir.mkdir(parents=True, exist_ok=True)
