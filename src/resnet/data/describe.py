"""What a report's CIFAR images are, in one phrase: the official files (lossless), or image files and, for JPEG, the
quality they were encoded at. A report records it when it measures (``Options.data_files``), so that it names its
data, and says when that data is not the paper's (the paper trains and tests on the lossless originals)."""

from __future__ import annotations

import io
import os
import tarfile
from functools import cache
from pathlib import Path

from PIL import Image

from .cifar import _tree_entry, default_data_dir, find_source

OFFICIAL = "the official CIFAR files (lossless)"


def describe_cifar_files(dataset: str, data_dir: str | os.PathLike | None) -> str | None:
    """``dataset``'s form in ``data_dir``: ``OFFICIAL``, or e.g. "JPEG files of quality 75 (`cifar10-train-jpeg.tar.gz`)";
    None where there is nothing to read (it will be downloaded: the official files)."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    source = find_source(dataset, root) if root.exists() else None
    if source is None:
        return None
    if source.kind in ("python", "archive"):
        return OFFICIAL
    first = _first_image(source.path, source.kind)
    if first is None:
        return f"image files (`{source.path.name}`)"
    with Image.open(io.BytesIO(first)) as img:
        if img.format != "JPEG":
            return f"{img.format} files (`{source.path.name}`)"
        quality = jpeg_quality(img.quantization)
    said = f"of quality {quality}" if quality else "(their quality tables are not the standard ones)"
    return f"JPEG files {said} (`{source.path.name}`)"


def _first_image(path: Path, kind: str) -> bytes | None:
    if kind == "tree":
        files = sorted(p for p in (path / "train").rglob("*") if p.is_file() and _tree_entry(str(p.relative_to(path))))
        return files[0].read_bytes() if files else None
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if member.isfile() and _tree_entry(member.name):
                return tar.extractfile(member).read()
    return None


def jpeg_quality(tables: dict) -> int | None:
    """The IJG quality (1-100) whose standard quantization tables are ``tables`` (PIL's ``Image.quantization``), found
    by encoding with each quality; None when none matches (another encoder's tables)."""
    mine = [list(t) for _, t in sorted(tables.items())]
    return next((q for q in range(100, 0, -1) if _tables(q) == mine[:len(_tables(q))]), None)


@cache
def _tables(quality: int) -> list[list[int]]:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=quality)
    with Image.open(buf) as img:
        return [list(t) for _, t in sorted(img.quantization.items())]
