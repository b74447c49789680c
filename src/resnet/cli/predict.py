"""``resnet predict IMAGE_OR_FOLDER... --weights W``: top-K classes of any image files.

Every image is decoded and cut by evaluation's own code (``evaluation.tta.single_view``), so that a file gets the
same answer from ``resnet predict`` and ``resnet eval``: RGB from any mode (grayscale, palette, CMYK, 16-bit and
transparent images included; transparency is composited over white), EXIF orientation ignored (as in evaluation and
torchvision's ImageFolder), torch's antialiased resize to the net's native input (CIFAR: the whole image to 32x32;
ImageNet: shorter side 256, centre crop 224), normalised with the weights' own normalisation, and classified on the
device and in the precision ``resnet eval`` would choose. An unreadable file
is reported on its own line and makes the exit status 1; the other files are still classified.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import UsageError
from .args import positive_int
from .train import add_runtime_options

# torch and PIL are imported inside the functions: every `resnet` command imports this module to register it, and
# `resnet --help` stays fast.


def register(sub) -> None:
    p = sub.add_parser("predict", help="top-K classes of image files or folders of images",
                       description="Classify images with any weights `resnet export` accepts. Exit status 1 if any "
                                   "file could not be read (the others are still printed), 2 on a usage error.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (searched recursively)")
    p.add_argument("--weights", required=True, metavar="W",
                   help="weight file (.safetensors, torchvision .pth, akamaster .th), run directory or shipped name")
    p.add_argument("--model", metavar="NAME", help="refuse weights of any other network than NAME")
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help='one JSON object per image: {"file", "top": [{"class", "prob"}]}')
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="B", help="images per forward pass (default 64)")
    add_runtime_options(p, tuned=False)  # the same device, precision and layout choice as `resnet eval`
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------------------------
# Images -> uint8 tensors


def find_images(inputs: list[str]) -> list[Path]:
    """Files as given, and every image file (by extension) under each folder, recursively, in sorted order."""
    from ..data.decode import readable_extensions

    files: list[Path] = []
    extensions = readable_extensions()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise UsageError(f"no image files under {path}; give image files or a folder that holds some")
            files += found
        else:
            files.append(path)  # a missing or unreadable file is reported with the results
    return files


def load_image(path: str | Path, family: str, size: int):
    """One image file -> uint8 tensor (3, size, size), decoded and cut exactly as ``resnet eval`` does
    (``evaluation.tta.single_view``: EXIF orientation ignored, as in evaluation and torchvision's ImageFolder)."""
    from ..evaluation.tta import single_view

    return single_view(path, family, size)


def _problem(path: Path) -> str | None:
    """Why a path cannot be read at all, in a few words (checked before decoding), or None."""
    if path.is_dir():
        return "is a directory"
    if not path.exists():
        return "no such file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Classification


def predict_files(weights, files: list[Path], top: int = 5, batch_size: int = 64, runtime=None, progress=None):
    """Yield, in file order, ``{"file", "top": [{"class", "prob"}]}`` or ``{"file", "error"}`` for each file.

    ``runtime`` (a ``resnet.runtime.Runtime``, default: CPU, fp32) places and runs the net as ``resnet eval`` does, and
    the probabilities come from evaluation's own scorer."""
    from ..data.decode import BadImageError
    from ..evaluation.tta import Scorer
    from ..runtime import resolve_runtime

    rt = runtime or resolve_runtime("cpu", "fp32", False, False)
    model = rt.prepare(weights.model).eval()
    cfg = model.config
    scorer = Scorer(rt.compile_model(model, inference=True), weights.normalization, rt.device, batch_size,
                    rt.autocast_dtype, rt.channels_last)
    classes = weights.classes
    k = min(top, cfg.num_classes)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images, results = [], []
        for path in chunk:
            problem = _problem(Path(path))
            if problem is None:
                try:
                    images.append(load_image(path, cfg.family, cfg.input_size))
                except BadImageError as e:  # every way a file can fail to decode; each becomes one reported line
                    problem = f"cannot read image ({str(e)[:160]})"
            results.append({"file": str(path)} if problem is None else {"file": str(path), "error": problem})
        if images:
            p, idx = scorer([[image[None]] for image in images]).topk(k, dim=1)
            good = iter(zip(p.tolist(), idx.tolist()))
            for r in results:
                if "error" not in r:
                    ps, ids = next(good)
                    r["top"] = [{"class": classes[i], "prob": round(q, 6)} for q, i in zip(ps, ids)]
        if progress is not None:
            progress.update(len(chunk))
        yield from results


def format_result(r: dict) -> str:
    if "error" in r:
        return f"{r['file']}: error: {r['error']}"
    lines = [r["file"]] + [f"  {100 * t['prob']:6.2f}%  {t['class']}" for t in r["top"]]
    return "\n".join(lines)


def run(args) -> int:
    from tqdm import tqdm

    from ..runtime import select_runtime
    from ..weights.importers import load_any

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    rt = select_runtime(args.device, args.runtime, args.precision, args.channels_last,
                        compile=bool(args.compile)).runtime  # as `resnet eval` asks: not tuned, compiled if asked
    weights = load_any(args.weights, args.model)
    files = find_images(args.inputs)
    any_folder = any(Path(i).is_dir() for i in args.inputs)
    failed = 0
    # The bar goes to stderr and only on a terminal (disable=None), so piped JSON lines stay clean.
    with tqdm(total=len(files), unit="img", desc="predict", disable=None if any_folder else True,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for r in predict_files(weights, files, args.top, args.batch_size, rt, bar):
            failed += "error" in r
            if args.json:
                tqdm.write(json.dumps(r), file=sys.stdout)
            elif "error" in r:
                tqdm.write(f"resnet predict: {format_result(r)}", file=sys.stderr)
            else:
                tqdm.write(format_result(r), file=sys.stdout)
    if failed:
        print(f"resnet predict: {failed} of {len(files)} files could not be read", file=sys.stderr)
        return 1
    return 0
