"""What a call of ``resnet gpu-campaign`` (``gpu.py``) leaves behind: the 10-view test of each finished run, the call's
Table 6 (``summary.json``, ``summary.md``) and its runs packed into tar files of a bounded size, from which another
machine resumes them.
"""

from __future__ import annotations

import json
import statistics
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..evaluation.evaluate import evaluate_images
from ..experiments import paper
from ..runs.spec import Options, RunSpec
from ..runs.store import is_finished
from ..training.checkpoint import CHECKPOINT, Checkpoint
from ..training.metrics import read_metrics
from ..weights.format import load_weights

LOG = "gpu-campaign.log"  # each run's process output, in its run folder
TEN_VIEW = "ten_view.json"  # the 10-view test of a finished run's last weights, in its run folder


def saved_step(path: Path) -> int:
    """The step a run has saved: its final line's, else its checkpoint's; 0 for none."""
    final = read_metrics(path).final
    if final is not None:
        return final.step
    try:
        return Checkpoint.load(path / CHECKPOINT).state.step
    except (OSError, UsageError):
        return 0


def ten_view(path: Path, held_out, rt) -> dict:
    """The 10-view test (``evaluation.evaluate.CIFAR_TTA['shift']``, beyond the paper) of a finished run's last
    weights on its held-out split (an ``ImageSet``), on the runtime ``rt``; saved in the run's folder, computed once."""
    file = path / TEN_VIEW
    if file.exists():
        return json.loads(file.read_text())
    w = load_weights(path / "last")
    r = evaluate_images(rt.prepare(w.model), w.normalization, held_out.images, held_out.labels, device=rt.device,
                        autocast_dtype=rt.autocast_dtype, tta="shift")
    result = {"tta": "shift", "top1_error": r["top1_error"], "top5_error": r["top5_error"], "images": r["images"]}
    file.write_text(json.dumps(result) + "\n")
    return result


@dataclass
class Row:
    """One net's line of the call's Table 6 (``summary.json``'s ``runs``: these fields, in this order)."""
    model: str
    label: str
    run: str  # the run folder's name
    state: str  # finished, stopped (a checkpoint) or not started
    step: int
    iterations: int
    val_error: float | None
    best_val_error: float | None
    val_error_10view: float | None
    eval_split: str | None
    seconds: float | None  # the run's wall time, over every call that trained it
    images_per_s: int | None  # the median over its evaluation intervals
    paper_test_error: float | None  # Table 6's, for the ResNets
    this_call: str | None  # what this call did with it


def row(model: str, path: Path, opts: Options, outcome: str | None) -> Row:
    """One net's line of the summary, from its run folder."""
    spec = RunSpec(model)
    metrics = read_metrics(path)
    final = metrics.final
    rates = [e.images_per_s for e in metrics.evaluations if e.images_per_s]
    tta = json.loads((path / TEN_VIEW).read_text()) if (path / TEN_VIEW).exists() else {}
    state = "finished" if final else "stopped" if (path / CHECKPOINT).exists() else "not started"
    paper_error = None if spec.plain else paper.CIFAR_TABLE6.get(spec.depth, {}).get("test_error")
    return Row(model=model, label=spec.label, run=path.name, state=state, step=saved_step(path),
               iterations=opts.plan.iterations, val_error=final.val_error if final else None,
               best_val_error=final.best_val_error if final else None, val_error_10view=tta.get("top1_error"),
               eval_split=final.eval_split if final else None, seconds=metrics.seconds,
               images_per_s=round(statistics.median(rates)) if rates else None, paper_test_error=paper_error,
               this_call=outcome)


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(summary: dict) -> str:
    """summary.md: the call's Table 6."""
    lines = [f"# Table 6 on one GPU: budget {summary['budget']} ({summary['iterations']} iterations), "
             f"part {summary['part']}", "",
             f"{summary['device']}, {summary['precision']}, compile {'on' if summary['compile'] else 'off'}, CUDA "
             f"graphs {'on' if summary['cuda_graphs'] else 'off'}, {summary['jobs']} process(es) at once; this call "
             f"took {summary['seconds']} s of its {summary['deadline_s']:g} s deadline.", "",
             "| net | iterations | val error % (1 view) | 10-view % | paper test % | wall m:ss | images/s | state |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (Row(**r) for r in summary["runs"]):
        lines.append(f"| {r.label} | {r.step}/{r.iterations} | {_pct(r.val_error)} | {_pct(r.val_error_10view)} | "
                     f"{_pct(r.paper_test_error)} | {_minutes(r.seconds)} | {r.images_per_s or '-'} | {r.state} |")
    lines += ["", "Validation error: the last weights on the images held out of the training images (Sec. 4.2's "
              "45k/5k split on CIFAR-10), single image (the paper's protocol) and 10 views (beyond the paper). The "
              "paper's column is Table 6's test error on the 10k official test images, lossless: not the same images.",
              "Images/s: the median over the run's evaluation intervals, evaluations included, with the other runs "
              "sharing the GPU. Wall time: the run's own, over every call that trained it.", ""]
    if summary["not_packed"]:
        lines.append(f"Not packed (over the size limits): {', '.join(summary['not_packed'])}.")
    lines += [f"Packed: {', '.join(f'{k} ({len(v)} runs)' for k, v in summary['packed'].items()) or 'nothing'}.",
              f"Command: `{summary['command']}`", ""]
    return "\n".join(lines)


def pack_runs(paths: list[Path], out: Path, limit: int) -> tuple[dict[str, list[str]], list[str]]:
    """Whole run folders into ``out/runs-N.tar``, each under ``limit`` bytes (files small enough for an artefact store
    or a transfer with a size limit): a finished run with its last weights and 10-view test, an unfinished one with
    its checkpoint (unpacked into a runs folder, it resumes). Returns {tar name: runs} and the runs left out: those
    whose own files are over the limit."""
    done = ("config.json", "metrics.jsonl", "curves.png", "last.safetensors", "last.json", TEN_VIEW, LOG)
    left = ("config.json", "metrics.jsonl", "curves.png", CHECKPOINT, LOG)
    room = limit - 10240  # the tar's end blocks
    packs: list[list[tuple[Path, list[Path]]]] = []
    sizes: list[int] = []
    not_packed = []
    for path in paths:
        files = [path / f for f in (done if is_finished(path) else left) if (path / f).is_file()]
        size = sum(f.stat().st_size + 1024 for f in files)  # each member with its header, rounded up
        i = next((i for i, s in enumerate(sizes) if s + size <= room), None)
        if i is None and size <= room:
            packs.append([])
            sizes.append(0)
            i = len(packs) - 1
        if i is None:
            not_packed.append(path.name)
            continue
        packs[i].append((path, files))
        sizes[i] += size
    for old in out.glob("runs-*.tar"):  # an earlier call's, in a folder used twice
        old.unlink()
    packed = {}
    for i, pack in enumerate(packs, 1):
        name = f"runs-{i}.tar"
        with tarfile.open(out / name, "w") as tar:
            for path, files in pack:
                for f in files:
                    tar.add(f, arcname=f"{path.name}/{f.name}")
        packed[name] = [path.name for path, _ in pack]
    return packed, not_packed
