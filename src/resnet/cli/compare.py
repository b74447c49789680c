"""``resnet compare RUN_DIR...``: training runs side by side: their final and best errors, wall time, the error under
the recipe's test protocol, when each first reached a target error, and their curves in one figure."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from .args import finite_float


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare training runs: errors, wall time, time to a target error, curves")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `resnet train`")
    p.add_argument("--target", type=finite_float, metavar="ERR",
                   help="validation error (%%) to reach: report the first evaluation at or below it")
    p.add_argument("--x", choices=("step", "seconds"), default="step", help="x axis of the figure (default: step)")
    p.add_argument("--plot", metavar="FILE.png", help="write the curves of every run into one figure")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def load_run(path: str | Path):
    """A run directory's records (``training.metrics.Metrics``) and config, read once; a folder that is not a run, or a
    run without an evaluation yet, is a usage error."""
    from ..training.metrics import read_metrics

    path = Path(path)
    has_config, has_metrics = (path / "config.json").is_file(), (path / "metrics.jsonl").is_file()
    if not (has_config or has_metrics):
        raise UsageError(f"{path} is not a run directory (no metrics.jsonl); pass folders written by resnet train")
    metrics = read_metrics(path)
    if not any(e.val_error is not None for e in metrics.evaluations):
        raise UsageError(f"{path} has no evaluation yet; wait for its first evaluation")
    return metrics, json.loads((path / "config.json").read_text()) if has_config else {}


def summarize_run(path: str | Path, metrics, config: dict, target: float | None = None) -> dict:
    """One run's figures from its records and config (``load_run``)."""
    evals = [e for e in metrics.evaluations if e.val_error is not None]
    final = metrics.final
    recipe = config.get("recipe", {})
    last = evals[-1]
    out = {"run": str(path), "model": config.get("model", {}).get("name"), "recipe": recipe.get("name"),
           "batch_size": recipe.get("batch_size"), "iterations": last.step, "finished": final is not None,
           "seconds": (final or last).seconds, "val_error": last.val_error,
           "best_val_error": min(e.val_error for e in evals),
           "tta": final.tta if final else None, "val_error_tta": final.val_error_tta if final else None}
    if target is not None:
        hit = next((e for e in evals if e.val_error <= target), None)
        if hit is not None:
            out["reached"] = {"step": hit.step, "seconds": hit.seconds, "by": "single image"}
        elif out["val_error_tta"] is not None and out["val_error_tta"] <= target:
            out["reached"] = {"step": final.step, "seconds": final.seconds, "by": f"--tta {out['tta']}"}
        else:
            out["reached"] = None
    return out


def _fmt(v, spec: str) -> str:
    """``v`` formatted by ``spec``; a missing figure is a dash of the same width."""
    return format("-", spec.rstrip("fd").split(".")[0]) if v is None else format(v, spec)


def run(args) -> int:
    from ..reporting.plots import check_figure_path, plot_error_curves

    if args.plot:
        check_figure_path(args.plot)
    loaded = {path: load_run(path) for path in args.runs}
    rows = [summarize_run(path, metrics, config, args.target) for path, (metrics, config) in loaded.items()]
    if args.plot:
        runs = {Path(path).name: metrics for path, (metrics, _) in loaded.items()}
        if args.x == "seconds":
            missing = [name for name, metrics in runs.items()
                       if all(e.seconds is None for e in metrics.evaluations)
                       and (metrics.final is None or metrics.final.seconds is None)]
            if missing:
                raise UsageError(f"{', '.join(missing)} logged no wall time (trained by an older version); "
                                 "use --x step")
        plot_error_curves(runs, args.plot, title="validation error", x=args.x, target=args.target)
    if args.json:
        print(json.dumps({"runs": rows, "target": args.target, "plot": args.plot}))
        return 0
    width = max(len(Path(r["run"]).name) for r in rows)
    head = f"{'run':<{width}}  {'recipe':>7} {'batch':>5} {'iters':>6} {'seconds':>8}  {'val err':>7} {'best':>6} " \
           f"{'with TTA':>14}"
    if args.target is not None:
        head += f"  reached {args.target:g}%"
    print(head)
    for r in rows:
        tta = f"{r['val_error_tta']:.2f} ({r['tta']})" if r["val_error_tta"] is not None else "-"
        line = (f"{Path(r['run']).name:<{width}}  {_fmt(r['recipe'], '>7')} {_fmt(r['batch_size'], '>5')} "
                f"{r['iterations']:>6} {_fmt(r['seconds'], '>8.0f')}  {r['val_error']:>7.2f} "
                f"{r['best_val_error']:>6.2f} {tta:>14}" + ("" if r["finished"] else "  (running)"))
        if args.target is not None:
            hit = r["reached"]
            line += ("  not reached" if hit is None else
                     f"  step {hit['step']}, {_fmt(hit['seconds'], '.0f')} s, {hit['by']}")
        print(line)
    if args.plot:
        print(f"figure: {args.plot}")
    return 0
