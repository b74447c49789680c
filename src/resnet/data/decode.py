"""Reading real-world image files fast and safely: what a file is (by its first bytes), decoding a JPEG at reduced size
when the network needs fewer pixels than the file holds, any PIL mode to RGB, and uint8 resizing without Python
loops.

Every failure a file can cause (empty, truncated, corrupt, not an image, a decompression bomb) surfaces as one
exception type, :class:`BadImageError`, whose message is the reason; the datasets decide whether to skip or stop.
EXIF orientation is ignored, as torchvision's ImageFolder (and so every published ImageNet model) does.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# The package's image-file vocabulary, in one place (lower-cased suffixes, compared case-blind; ImageNet's own files
# end in ".JPEG"):
# - what the image-folder datasets read: the formats whose signatures ``sniff`` knows;
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# - CIFAR-style image trees and archives, whose small images PIL decodes whole, in any format it reads;
CIFAR_TREE_EXTENSIONS = IMAGE_EXTENSIONS + (".gif", ".ppm", ".tif", ".tiff")


def readable_extensions() -> set[str]:
    """- and any file PIL can open, for ``resnet predict``'s folder search (every format a user may hand it)."""
    return {ext.lower() for ext in Image.registered_extensions()}
# PIL's own limit (about 89 MPixel): larger images are treated as decompression bombs. A ``max_pixels`` argument can
# lower it (PIL's limit is process-wide state, which this module leaves alone).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
WHITE = (255, 255, 255)
Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels


class BadImageError(Exception):
    """A file that cannot be used as an image; the message says why (one line)."""


def sniff(head: bytes) -> str | None:
    """The image format named by a file's first bytes (at least 12), or None if it is none we read."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    return None


def check_file(path: str) -> str | None:
    """The reason a file is not an image, judged cheaply from its first bytes, or None if it looks like one."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if not head:
        return "zero-byte file"
    if sniff(head) is None:
        return "not an image (unknown file signature)"
    return None


def open_image(path: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read a file (one read into memory; no file stays open) and parse its header; refuse decompression bombs
    before any pixel is decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImageError(f"unreadable ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImageError(f"decompression bomb ({e})") from None
    except Image.DecompressionBombWarning:
        raise BadImageError(f"decompression bomb (more than PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except Exception as e:  # UnidentifiedImageError, SyntaxError, OSError, struct.error, ...
        raise BadImageError(_reason(e)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise BadImageError(f"decompression bomb ({w}x{h} = {w * h} pixels, limit {max_pixels})")
    if w < 1 or h < 1:
        raise BadImageError(f"empty image ({w}x{h})")
    return img


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "cannot identify image file" in text:
        return "not a readable image (corrupt or unknown format)"
    if "truncated" in text:
        return "truncated file"
    return f"corrupt ({text})"


def draft(img: Image.Image, needed_w: float, needed_h: float) -> float:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 size (the DCT scaling of libjpeg) where the result still holds at least
    ``needed_w`` x ``needed_h`` pixels. Returns the factor by which the decoded image is smaller (1 for other files)."""
    if img.format != "JPEG":
        return 1.0
    w, h = img.size
    factor = min(w / max(needed_w, 1.0), h / max(needed_h, 1.0))
    scale = next((s for s in (8, 4, 2) if s <= factor), 1)
    if scale == 1:
        return 1.0
    # PIL picks the largest of 8/4/2/1 that is <= min(w // rw, h // rh); asking for (w // s, h // s) gives exactly s.
    result = img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
    if result is None:
        return 1.0
    return w / result[1][2]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: grayscale, palette, CMYK and 1-bit convert; alpha is composited on white (a
    transparent background is white in every browser); 16- and 32-bit grayscale is scaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str, min_short_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The whole image as RGB; with ``min_short_side`` a JPEG may decode smaller, keeping its shorter side at least
    that long."""
    img = open_image(path, max_pixels)
    try:
        if min_short_side:
            w, h = img.size
            s = min(w, h)
            draft(img, min_short_side * w / s, min_short_side * h / s)
        img.load()
        return to_rgb(img)
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(_reason(e)) from None


def load_crop(path: str, box: Box | Callable[[int, int], Box], size: tuple[int, int], flip: bool = False,
              max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode only as much as a crop needs and return it resized to ``size`` = (h, w) as a contiguous uint8
    (3, h, w) tensor.

    ``box`` is (left, top, right, bottom) in the file's pixel coordinates, or a function of the file's (width,
    height) that returns one (the crop of a random augmentation depends on the image size). A JPEG is decoded at the
    smallest DCT scale that still leaves the box at least ``size``; only the box is converted and resized.
    """
    img = open_image(path, max_pixels)
    try:
        if callable(box):
            box = box(*img.size)
        left, top, right, bottom = box
        # the full image at a size where the box still holds at least ``size`` pixels
        r = draft(img, size[1] * img.size[0] / max(right - left, 1e-6), size[0] * img.size[1] / max(bottom - top, 1e-6))
        img.load()
        w, h = img.size
        ix0, iy0 = max(0, math.floor(left / r + 0.5)), max(0, math.floor(top / r + 0.5))
        ix1, iy1 = min(w, max(ix0 + 1, math.floor(right / r + 0.5))), min(h, max(iy0 + 1, math.floor(bottom / r + 0.5)))
        x = pil_to_tensor(img.crop((ix0, iy0, ix1, iy1)))
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(_reason(e)) from None
    x = resize(x[None], size)[0].contiguous()
    return x.flip(-1) if flip else x


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 (3, H, W) tensor (a view of an (H, W, 3) array: channels-last in memory)."""
    return torch.from_numpy(np.array(to_rgb(img), dtype=np.uint8, copy=True)).permute(2, 0, 1)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, h, w), bilinear with antialiasing. On the CPU this is torch's vectorised
    uint8 kernel (it reads channels-last input without a copy and writes contiguous output); elsewhere it runs in
    float and rounds back."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    y = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h, w) scaled so that the shorter side is ``short`` (torchvision's rounding)."""
    if h <= w:
        return short, max(1, int(short * w / h))
    return max(1, int(short * h / w)), short

