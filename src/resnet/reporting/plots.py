"""Every figure of the package, in the style of the paper's: training error thin and dashed, validation/test error
bold (Fig. 1, 4, 6): a run's error curves (the trainer's ``curves.png``, ``resnet compare``), Fig. 6's panels, Fig. 7's
responses in original order and sorted, and the figures of the analyses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import UsageError  # noqa: E402

X_LABELS = {"step": "iterations", "seconds": "wall time (s)"}

# One clearly distinct colour per depth, in every multi-depth figure (shallow to deep: amber, green, red, blue, black,
# purple; no two of them close in hue or lightness).
DEPTH_COLORS = {18: "#e69f00", 20: "#e69f00", 32: "#009e73", 34: "#009e73", 44: "#d55e00", 50: "#d55e00",
                56: "#0072b2", 101: "#0072b2", 110: "#000000", 152: "#000000", 1202: "#cc79a7"}


def _save(fig, out: Path) -> Path:
    """Every figure ends the same way: tight layout, a 120-dpi PNG, the figure closed."""
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _color(depth, i: int) -> str:
    return DEPTH_COLORS.get(depth) if isinstance(depth, int) and depth in DEPTH_COLORS else plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10]


def plot_error_curves(runs: dict, out: str | Path, title: str = "", ylim: tuple | None = None,
                      val_label: str = "val", x: str = "step", target: float | None = None) -> Path:
    """``runs`` maps a label to a run's records (``training.metrics.Metrics``: its evaluations, with ``train_error``,
    ``val_error`` and ``x``, the ``step`` or the run's wall time in ``seconds``, and its final record). A final record
    with ``val_error_tta`` (the recipe's test protocol) is drawn as a star at the run's end; ``target`` as a dotted
    horizontal line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, metrics) in enumerate(runs.items()):
        final = metrics.final
        if final is not None and (final.val_error_tta is None or getattr(final, x) is None):
            final = None
        records = [r for r in metrics.evaluations if r.val_error is not None and getattr(r, x) is not None]
        if not records:
            continue
        c = colors[i % len(colors)]
        xs = [getattr(r, x) for r in records]
        trained = [r for r in records if r.train_error is not None]
        if trained:
            ax.plot([getattr(r, x) for r in trained], [r.train_error for r in trained], "--", color=c, linewidth=1)
        ax.plot(xs, [r.val_error for r in records], "-", color=c, linewidth=2, label=label)
        if final is not None:
            ax.plot([getattr(final, x)], [final.val_error_tta], "*", color=c, markersize=11,
                    label=f"{label}, --tta {final.tta}")
    if target is not None:
        ax.axhline(target, color="gray", linestyle=":", linewidth=1.2, label=f"target {target:g}%")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("error (%)")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(title=f"dashed: training, bold: {val_label}", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out)
    try:
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise UsageError(f"could not write the figure {out}: {e.strerror or e}; check that {out.parent} exists "
                         "and is writable") from None
    finally:
        plt.close(fig)
    return out


def check_figure_path(out: str | Path) -> Path:
    """A figure file that can be written: a format matplotlib knows, in an existing folder (checked before the work
    that draws it, which may be long)."""
    # matplotlib is imported when a figure is drawn, not with the package
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise UsageError(f"{out}: cannot tell a figure format from {out.suffix or 'no extension'}; name it .png, "
                         ".pdf or .svg (or any of: " + ", ".join(sorted(formats)) + ")")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: no folder {out.parent}; create it or give another path")
    return out


def degradation_figure(panels: dict[str, dict[int, list[dict]]], out: Path, val_label: str = "val",
                       ylim: tuple[float, float] | None = None) -> Path:
    """``panels``: panel title -> depth -> metric records. One panel per family, plain left, ResNet right (Fig. 6);
    ``ylim=(0, 20)`` is the paper's range. A panel with no curve says so instead of showing empty axes."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), sharex=True, sharey=True, squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels.items()):
        drawn = 0
        for i, (depth, records) in enumerate(sorted(runs.items())):
            records = [r for r in records if "val_error" in r and "train_error" in r]
            if not records:
                continue
            c = _color(depth, i)
            steps = [r["step"] for r in records]
            dot = "o" if len(records) < 3 else ""  # a curve of one or two evaluations is drawn as points too
            ax.plot(steps, [r["train_error"] for r in records], f"{dot}--", color=c, linewidth=1)
            ax.plot(steps, [r["val_error"] for r in records], f"{dot}-", color=c, linewidth=2,
                    label=f"{title}-{depth}" if isinstance(depth, int) else f"{title} {depth}")
            drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xlabel("iterations")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
        if drawn:
            ax.legend(fontsize=8, title=f"dashed: training, bold: {val_label}", title_fontsize=7)
    axes[0][0].set_ylabel("error (%)")
    return _save(fig, out)


def final_error_figure(rows: dict[str, dict[int, float]], out: Path, ylabel: str) -> Path:
    """Final error against depth, one line per family."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for label, by_depth in rows.items():
        depths = sorted(by_depth)
        ax.plot(depths, [by_depth[d] for d in depths], "o--" if label.startswith("plain") else "o-", label=label)
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def responses_figure(stds: dict[str, list[float]], out: Path) -> Path:
    """Fig. 7: std of each 3x3 layer's response; top: original order, bottom: sorted by magnitude."""
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 6.0))
    for i, (label, values) in enumerate(stds.items()):
        style = "--" if label.startswith("plain") else "-"
        depth = int(label.split("-")[-1].split()[0]) if label.split("-")[-1].split()[0].isdigit() else 0
        c = _color(depth, i)
        x = range(1, len(values) + 1)
        axes[0].plot(x, values, style, color=c, label=label, linewidth=1.4)
        axes[1].plot(x, sorted(values, reverse=True), style, color=c, label=label, linewidth=1.4)
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def lesion_figure(curves: dict[str, dict], out: Path) -> Path:
    """Validation error after deleting one block, per block, with each net's intact error as a dotted line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (label, c) in enumerate(curves.items()):
        color = plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10]
        pts = [(k + 1, e) for k, e in enumerate(c["errors"]) if e is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o--" if label.startswith("plain") else "o-",
                color=color, label=label, markersize=3)
        ax.axhline(c["intact"], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("deleted block")
    ax.set_ylabel("validation error (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="dotted: no block deleted", title_fontsize=7)
    return _save(fig, out)


def landscape_1d_figure(curves: dict[str, tuple[list[float], list[float]]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    for label, (alphas, losses) in curves.items():
        ax.plot(alphas, losses, "--" if label.startswith("plain") else "-", label=label)
    ax.set_xlabel("step along a filter-normalised direction")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def landscape_2d_figure(surfaces: dict[str, tuple[list[float], list[list[float]]]], out: Path) -> Path:
    """Contours of the training loss on a 2-D slice, one panel per net, sharing their levels and one colour bar."""
    fig, axes = plt.subplots(1, len(surfaces), figsize=(4.8 * len(surfaces), 4.2), sharey=True, squeeze=False)
    all_losses = np.concatenate([np.asarray(s[1], dtype=float).ravel() for s in surfaces.values()])
    finite = all_losses[np.isfinite(all_losses)]
    lo, hi = max(float(finite.min()), 1e-3), max(float(finite.max()), float(finite.min()) * 1.01 + 1e-3)
    levels = np.geomspace(lo, hi, 25) if hi > lo else 10
    norm = matplotlib.colors.LogNorm(vmin=lo, vmax=hi) if hi > lo else None
    for ax, (label, (alphas, grid)) in zip(axes[0], surfaces.items()):
        z = np.clip(np.asarray(grid, dtype=float), lo, hi)
        cs = ax.contour(alphas, alphas, z.T, levels=levels, cmap="viridis", norm=norm, linewidths=0.9)
        ax.plot([0], [0], "k+")
        ax.set_title(label)
        ax.set_xlabel("direction 1")
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("direction 2")  # the panels share it; a label on each ran into its left neighbour
    # One colour bar for all panels (they share the levels) instead of numbers on the lines, which overlapped.
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes[0].tolist(), shrink=0.85)
    bar.set_label("training loss (log scale)")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def gradient_figure(norms: dict[str, dict[int, list[float]]], out: Path) -> Path:
    """Per-layer gradient norms (log scale), one panel per net, one line per recorded iteration."""
    fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms), 4.0), sharey=True, squeeze=False)
    for ax, (label, by_step) in zip(axes[0], norms.items()):
        cmap = plt.get_cmap("viridis")
        steps = sorted(by_step)
        for i, step in enumerate(steps):
            values = by_step[step]
            ax.plot(range(1, len(values) + 1), values, "-o", markersize=2, linewidth=1,
                    color=cmap(i / max(1, len(steps) - 1)), label=f"iteration {step}")
        ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("conv layer (input side -> output side)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("gradient norm of the layer's weights")
    return _save(fig, out)
