"""Export weights for use outside this package: ONNX, TorchScript, or the project's safetensors format.

The ONNX and TorchScript files hold the network *after* input normalisation: their input is a float32 batch
``(N, 3, S, S)`` of RGB images already scaled to [0, 1] and normalised with the weights' stored normalisation,
``x = (rgb / 255 - mean) / std``; their output is the logits (softmax gives probabilities). The mean, std, classes and
preprocessing are written next to the file as ``FILE.json``. Each export is run once against PyTorch on a batch of
images (another batch size than the one it was traced with) and refused if any logit differs by more than
:data:`TOLERANCE`.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError, choices
from ..files import atomic_path, atomic_write_bytes
from .format import Weights, save_weights, weight_paths

FORMATS = ("onnx", "torchscript", "safetensors")
EXTENSIONS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
              ".safetensors": "safetensors"}
TOLERANCE = 1e-4  # max |logit difference| between the exported file and PyTorch
DEFAULT_OPSET = 17
TRACE_BATCH, CHECK_BATCH = 2, 8  # different on purpose: the check also proves the batch dimension is dynamic


@dataclass
class ExportResult:
    format: str
    path: Path
    sidecar: Path
    max_abs_diff: float | None  # None for safetensors (same tensors, nothing to compare)
    checked_images: int = 0


def format_from_path(path: str | os.PathLike) -> str | None:
    return EXTENSIONS.get(Path(path).suffix.lower())


def preprocessing(family: str, size: int) -> str:
    """How an image becomes the uint8 input of the net (what ``resnet predict`` does)."""
    if family == "cifar":
        return f"RGB, whole image resized to {size}x{size}"
    return f"RGB, shorter side resized to {round(size * 256 / 224)}, centre crop {size}x{size}"


def check_batch(weights: Weights, n: int = CHECK_BATCH, input_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """A batch of normalised inputs: seeded random uint8 images through the weights' normalisation."""
    size = input_size or weights.model.config.input_size
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return weights.normalization(images)


def _decimal(t: torch.Tensor, digits: int = 7) -> list:
    """float32 values as the short decimals they were written as (0.485, not 0.48500001430511475)."""
    return ((t.double() * 10**digits).round() / 10**digits).tolist()


def sidecar_info(weights: Weights, fmt: str, input_size: int, check: dict | None, **extra) -> dict:
    cfg = weights.model.config
    norm = weights.normalization
    return {
        "format": fmt,
        "model": cfg.to_dict(),
        "input": {
            "name": "input", "shape": ["batch", 3, input_size, input_size], "dtype": "float32", "layout": "NCHW RGB",
            "formula": "x = (rgb_uint8 / 255 - mean) / std",
            "normalization": {"kind": norm.kind, "mean": _decimal(norm.mean.squeeze()), "std": _decimal(norm.std.flatten())},
            "preprocessing": preprocessing(cfg.family, input_size),
        },
        "output": {"name": "logits", "shape": ["batch", cfg.num_classes], "note": "softmax gives probabilities"},
        "classes": weights.classes,
        "check": check,
        "source": weights.meta.get("source"),
        **extra,
    }


def _opset_range() -> tuple[int, int]:
    """Opsets the TorchScript-based ONNX exporter supports (private constants; a safe guess if they move)."""
    try:
        # torch.onnx is imported for ONNX export only (slow to import)
        from torch.onnx import _constants as c

        return c.ONNX_MIN_OPSET, getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, 17


@torch.no_grad()
def export_onnx(weights: Weights, out: str | os.PathLike, opset: int = DEFAULT_OPSET, input_size: int | None = None) -> ExportResult:
    """ONNX with a dynamic batch dimension, via the TorchScript-based exporter (works from torch 2.4 on)."""
    try:
        # onnxruntime is an optional extra ('.[export]')
        import onnxruntime as ort
    except ImportError:
        raise UsageError("ONNX export needs onnx and onnxruntime; pip install 'resnet-reference[export]'") from None
    low, high = _opset_range()
    if not low <= opset <= high:  # checked here: torch prints its whole graph to stderr when it rejects an opset
        raise UsageError(f"--opset {opset} is not supported by this torch's exporter; use {low}..{high} "
                         f"(default {DEFAULT_OPSET})")
    model = weights.model.eval().cpu()
    size = input_size or model.config.input_size
    out = Path(out)
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=opset, do_constant_folding=True,
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the legacy exporter: no onnxscript needed, stable output across torch versions
    try:
        with atomic_path(out, durable=False) as tmp:  # `out` appears only once checked
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notices and constant-folding remarks about strided slices
                torch.onnx.export(model, (check_batch(weights, TRACE_BATCH, size, seed=1),), str(tmp), **kwargs)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
            x = check_batch(weights, CHECK_BATCH, size)
            got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
            diff = float((got - model(x)).abs().max())
            if not diff <= TOLERANCE:
                raise UsageError(f"the ONNX export differs from PyTorch by {diff:.3g} > {TOLERANCE:g} on {CHECK_BATCH} "
                                 "images; try another --opset")
    except UsageError:
        raise
    except Exception as e:  # exporter and runtime failures: one line, not a traceback
        raise UsageError(f"ONNX export failed at opset {opset}: {str(e).strip().splitlines()[0][:200]}; try "
                         f"--opset {DEFAULT_OPSET}") from None
    check = {"runtime": f"onnxruntime {ort.__version__}", "images": CHECK_BATCH, "max_abs_diff": diff}
    return _finish(weights, "onnx", out, size, check, diff, opset=opset)


@torch.no_grad()
def export_torchscript(weights: Weights, out: str | os.PathLike, input_size: int | None = None) -> ExportResult:
    """TorchScript by tracing (the net has no data-dependent control flow), reloaded and checked."""
    model = weights.model.eval().cpu()
    size = input_size or model.config.input_size
    out = Path(out)
    with atomic_path(out, durable=False) as tmp:  # `out` appears only once checked
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            traced = torch.jit.trace(model, (check_batch(weights, TRACE_BATCH, size, seed=1),), check_trace=False)
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        x = check_batch(weights, CHECK_BATCH, size)
        diff = float((loaded(x) - model(x)).abs().max())
        if not diff <= TOLERANCE:
            raise UsageError(f"the TorchScript export differs from PyTorch by {diff:.3g} > {TOLERANCE:g}")
    check = {"runtime": f"torch {torch.__version__}", "images": CHECK_BATCH, "max_abs_diff": diff}
    return _finish(weights, "torchscript", out, size, check, diff)


def export_safetensors(weights: Weights, out: str | os.PathLike) -> ExportResult:
    """The project's own format (imported weights converted once, loaded later without any pickle)."""
    st_path = save_weights(out, weights.model, weights.normalization, weights.meta)
    return ExportResult("safetensors", st_path, weight_paths(st_path)[1], None)


def _finish(weights: Weights, fmt: str, out: Path, size: int, check: dict, diff: float, **extra) -> ExportResult:
    sidecar = Path(f"{out}.json")
    info = sidecar_info(weights, fmt, size, check, file=out.name, **extra)
    atomic_write_bytes(sidecar, (json.dumps(info, indent=2) + "\n").encode())
    return ExportResult(fmt, out, sidecar, diff, CHECK_BATCH)


def export(weights: Weights, out: str | os.PathLike, fmt: str | None = None, *, opset: int = DEFAULT_OPSET,
           input_size: int | None = None) -> ExportResult:
    """Export to ``fmt`` (or the format ``out``'s extension names)."""
    fmt = fmt or format_from_path(out)
    if fmt is None:
        raise UsageError(f"cannot tell the export format from {out}'s extension ({Path(out).suffix or 'none'}); name "
                         f"it {', '.join(EXTENSIONS)}, or pass --format with one of: {choices(FORMATS)}")
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; pass --format with one of: {choices(FORMATS)}")
    if input_size is not None and input_size < 8:
        raise UsageError(f"--input-size {input_size} is too small; use at least 32 (the net halves the map 3-5 times)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        return export_onnx(weights, out, opset, input_size)
    if fmt == "torchscript":
        return export_torchscript(weights, out, input_size)
    return export_safetensors(weights, out)
