"""``resnet predict IMAGE_OR_FOLDER... --weights W``: top-K classes of any image files.

Every image becomes RGB (grayscale, palette, CMYK, 16-bit and transparent images included; transparency is composited
over white), is resized to the net's native input the way it was evaluated (CIFAR: the whole image to 32x32; ImageNet:
shorter side 256, centre crop 224), normalised with the weights' own normalisation, and classified. An unreadable file
is reported on its own line and makes the exit status 1; the other files are still classified.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UsageError
from .args import positive_int

# numpy, torch and PIL are imported inside the functions: every `resnet` command imports this module to register it.


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
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------------------------
# Images -> uint8 tensors


def image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def find_images(inputs: list[str]) -> list[Path]:
    """Files as given, and every image file (by extension) under each folder, recursively, in sorted order."""
    files: list[Path] = []
    extensions = image_extensions()
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


def to_rgb(img):
    """Any PIL image -> 8-bit RGB. 16-bit and float data are scaled, not clipped; transparency goes over white."""
    import numpy as np
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.max() > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        elif img.mode == "F" and a.max() <= 1.0:
            a = a * 255.0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, family: str, size: int):
    """One image file -> uint8 tensor (3, size, size), preprocessed as the net was evaluated."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        resize_to = size if family == "cifar" else round(size * 256 / 224)
        if img.format == "JPEG":
            img.draft("RGB", (resize_to, resize_to))  # decode big JPEGs at a reduced scale, never below the target
        img = ImageOps.exif_transpose(img) or img
        img = to_rgb(img)
    if family == "cifar":
        # The whole image to the net's input (CIFAR images are the whole scene, not a crop of it).
        img = img.resize((size, size), Image.BILINEAR)
    else:
        # The paper's single-view test (Sec. 3.4): shorter side 256, centre 224x224 crop.
        w, h = img.size
        scale = resize_to / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
        img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _reason(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"cannot read image ({text[:160]})"


# ---------------------------------------------------------------------------------------------------------------------
# Classification


def predict_files(weights, files: list[Path], top: int = 5, batch_size: int = 64, device: str = "cpu", progress=None):
    """Yield, in file order, ``{"file", "top": [{"class", "prob"}]}`` or ``{"file", "error"}`` for each file."""
    import torch
    model = weights.model.eval().to(device)
    norm = weights.normalization.to(device)
    cfg = model.config
    classes = weights.classes
    k = min(top, cfg.num_classes)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images, results = [], []
        for path in chunk:
            try:
                images.append(load_image(path, cfg.family, cfg.input_size))
                results.append({"file": str(path)})
            except Exception as e:  # PIL raises many types for broken files; each becomes one reported line
                results.append({"file": str(path), "error": _reason(e)})
        if images:
            with torch.inference_mode():
                probs = model(norm(torch.stack(images).to(device))).float().softmax(1)
                p, idx = probs.topk(k, dim=1)
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
    import torch
    from tqdm import tqdm

    from ..weights.importers import load_any

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = load_any(args.weights, args.model)
    files = find_images(args.inputs)
    any_folder = any(Path(i).is_dir() for i in args.inputs)
    failed = 0
    # The bar goes to stderr and only on a terminal (disable=None), so piped JSON lines stay clean.
    with tqdm(total=len(files), unit="img", desc="predict", disable=None if any_folder else True,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for r in predict_files(weights, files, args.top, args.batch_size, device, bar):
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
