"""The analyses of a finished run, kept with its record: Fig. 7's layer responses and, for the lesion study's nets, the
validation error after deleting each block in turn.

They are measured once, on the run's last weights, on the whole validation split, in fp32 (the same numbers on every
CPU), and written as ``analysis.json`` beside the record's ``config.json`` and ``metrics.jsonl``. The reports
(``resnet reproduce layer-responses|lesion --budget fast-32k --records DIR``) read them there, so that Fig. 7 and the
lesion study re-render from the repository alone, across every recorded seed, once the run folders and their weights
are gone with their machines.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from ..experiments.lesion import lesion_errors
from ..experiments.responses import layer_stds, response_layers, validation_images
from ..files import atomic_write_bytes
from ..runs.records import ANALYSIS
from ..runs.spec import Options
from ..runtime import resolve_runtime
from ..weights import pretrained
from ..weights.format import Weights, load_weights
from .plan import PLAN, Entry, record_path, run_path

logger = logging.getLogger("resnet.campaign")

LESION_DEPTHS = (56,)  # the lesion study's nets: every deletion is a pass over the split, so the deepest are left out


def analyse(weights: Weights, images, labels) -> dict:
    """The layer responses (std of each 3x3 layer's output, in depth order) of one net and, at ``LESION_DEPTHS``, the
    error with nothing deleted and with each block deleted (None where a plain block changes the shape)."""
    rt = resolve_runtime("cpu", "fp32", compile=False)
    net = weights.model
    out = {"images": len(images), "precision": "fp32", "layers": [name for name, _ in response_layers(net)],
           "layer_std": layer_stds(net, weights.normalization, images, rt=rt)}
    if net.config.depth in LESION_DEPTHS:
        out["lesion"] = lesion_errors(net, weights.normalization, images, labels, rt)
    return out


def write_analysis(record: Path, weights: Weights, opts: Options) -> Path:
    """Measure ``weights`` on the validation split of ``opts``'s data and write ``record/analysis.json``."""
    images, labels = validation_images(opts, None)
    path = record / ANALYSIS
    atomic_write_bytes(path, (json.dumps(analyse(weights, images, labels), indent=1) + "\n").encode())
    return path


def last_weights(entry: Entry, opts: Options, record: Path) -> Weights | None:
    """A finished run's last weights: from its run folder on this machine, else from the shipped weights made from
    it (their metadata names the run); None when neither is here."""
    last = run_path(entry, opts) / "last.safetensors"
    if last.exists():
        return load_weights(last)
    for name, meta in pretrained.shipped().items():
        if meta.get("run") == record.name:
            return load_weights(pretrained.pretrained_path(name))
    return None


def analyse_finished(opts: Options, records: Path, plan: tuple[Entry, ...] = PLAN,
                     log: Callable[[str], None] = logger.info) -> list[Path]:
    """Write ``analysis.json`` for every recorded run of the plan that lacks one and whose last weights are here."""
    written = []
    for entry in plan:
        record = record_path(entry, opts, records)
        if not (record / "metrics.jsonl").exists() or (record / ANALYSIS).exists():
            continue
        weights = last_weights(entry, opts, record)
        if weights is None:
            log(f"[campaign] {record.name}: no analysis (its run folder is not here and no shipped weights name it)")
            continue
        written.append(write_analysis(record, weights, opts))
        log(f"[campaign] {record.name}: layer responses{' and lesion errors' if entry.spec.depth in LESION_DEPTHS else ''}"
            f" in {written[-1]}")
    return written
