"""Figures in the style of the paper's: training error thin and dashed, validation/test error bold (Fig. 1, 4, 6)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import UsageError  # noqa: E402

X_LABELS = {"step": "iterations", "seconds": "wall time (s)"}


def plot_error_curves(runs: dict[str, list[dict]], out: str | Path, title: str = "", ylim: tuple | None = None,
                      val_label: str = "val", x: str = "step", target: float | None = None) -> Path:
    """``runs`` maps a label to its metric records (``train_error``, ``val_error`` and ``x``: the ``step`` or the
    run's wall time in ``seconds``). A final record with ``val_error_tta`` (the recipe's test protocol) is drawn as a
    star at the run's end; ``target`` as a dotted horizontal line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, records) in enumerate(runs.items()):
        final = next((r for r in records if r.get("final") and r.get("val_error_tta") is not None and x in r), None)
        records = [r for r in records if "val_error" in r and x in r and not r.get("final")]
        if not records:
            continue
        c = colors[i % len(colors)]
        xs = [r[x] for r in records]
        if any(r.get("train_error") is not None for r in records):
            ax.plot([r[x] for r in records if r.get("train_error") is not None],
                    [r["train_error"] for r in records if r.get("train_error") is not None],
                    "--", color=c, linewidth=1)
        ax.plot(xs, [r["val_error"] for r in records], "-", color=c, linewidth=2, label=label)
        if final is not None:
            ax.plot([final[x]], [final["val_error_tta"]], "*", color=c, markersize=11,
                    label=f"{label}, --tta {final['tta']}")
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
