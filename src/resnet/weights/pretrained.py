"""Weights shipped with the package, by name: ``resnet20-cifar10`` is ``pretrained/resnet20-cifar10.safetensors`` (+ its
``.json``) next to this module. A name is whatever file the training runs have placed there; nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UsageError

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

# A name, not a path: no separators, no leading dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def available() -> list[str]:
    """Names of the shipped weights (files that have both their .safetensors and .json)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors") if p.with_suffix(".json").exists())


def shipped() -> dict[str, dict]:
    """Every shipped name with its metadata (the .json beside the weights: model, recipe, budget, errors)."""
    return {name: json.loads((PRETRAINED_DIR / f"{name}.json").read_text()) for name in available()}


def looks_like_name(source: str) -> bool:
    return bool(_NAME.match(source)) and not source.endswith((".safetensors", ".json", ".pth", ".pt", ".th", ".ckpt"))


def pretrained_path(name: str) -> Path:
    """The .safetensors file of shipped weights ``name``; a clear error listing the names there are otherwise."""
    path = PRETRAINED_DIR / f"{name}.safetensors"
    if looks_like_name(name) and path.exists() and path.with_suffix(".json").exists():
        return path
    names = available()
    listed = ", ".join(names) if names else "none are shipped in this installation yet"
    raise UsageError(f"{name!r} is neither a weight file nor the name of shipped weights (available: {listed}); "
                     "give a path to a .safetensors/.pth/.th file or a run directory, or one of those names")
