"""The project's weight files: ``NAME.safetensors`` (model tensors and the input normalisation) next to
``NAME.json`` (model config, classes, normalisation kind, training recipe, accuracy and the split it was measured on).

safetensors holds only tensors, so loading a file never executes code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save

from ..data.normalize import Normalization
from ..errors import UsageError
from ..files import atomic_write_bytes
from ..models import ModelConfig, ResNet

FORMAT_VERSION = 1


@dataclass
class Weights:
    model: ResNet
    normalization: Normalization
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.meta.get("classes") or [str(i) for i in range(self.model.config.num_classes)]


def weight_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_weights(path: str | os.PathLike, model: ResNet, normalization: Normalization, meta: dict | None = None) -> Path:
    """Save ``model`` (its config, classes, normalisation and any ``meta``) as safetensors + JSON. Returns the
    .safetensors path."""
    st_path, json_path = weight_paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(normalization.state_dict())
    info = dict(meta or {})
    info.update(format_version=FORMAT_VERSION, model=model.config.to_dict(), normalization=normalization.kind)
    try:
        atomic_write_bytes(st_path, save(tensors))
        atomic_write_bytes(json_path, (json.dumps(info, indent=2) + "\n").encode())
    except OSError as e:
        raise UsageError(f"could not write weights to {st_path}: {e.strerror or e}; free disk space or pick another --out") from e
    return st_path


def read_meta(path: str | os.PathLike) -> dict:
    _, json_path = weight_paths(path)
    try:
        return json.loads(json_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{json_path} is missing; a weight file needs its JSON metadata next to it") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{json_path} is not valid JSON ({e}); re-save the weights") from None


def load_weights(path: str | os.PathLike, map_location: str = "cpu") -> Weights:
    st_path, _ = weight_paths(path)
    if not st_path.exists():
        raise UsageError(f"no weight file at {st_path}; give a .safetensors file saved by resnet train or resnet export")
    meta = read_meta(st_path)
    try:
        tensors = load_file(str(st_path), device=map_location)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise UsageError(f"{st_path} is not a readable safetensors file ({e}); re-download or re-export it") from None
    m = meta["model"]
    cfg = ModelConfig(**{**m, "stage_blocks": tuple(m["stage_blocks"])})
    model = ResNet(cfg)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"{st_path} does not match its metadata's model {cfg.name}: {str(e).splitlines()[0]}") from None
    return Weights(model.eval(), Normalization.from_state_dict(tensors), meta)
