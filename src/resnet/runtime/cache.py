"""The autotuner's memory: each measured choice, kept in ``runtime-choices.json`` under the package's cache root
(``files.cache_root``) under a key of everything that could change which runtime is fastest, so that later runs
start at once. Several processes may tune at the same time (the campaign's): each update holds the file's lock."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files import atomic_write_bytes, cache_root, locked
from ..models.resnet import ModelConfig
from .hardware import cpu_capability, native_bf16

CACHE_FILE = "runtime-choices.json"


def cache_key(device: torch.device, cfg: ModelConfig, mode: str, batch_size: int) -> str:
    """The CPU capability (and native bf16), torch version, model, batch size, mode and thread count of a choice."""
    model = cfg.name + (f" {cfg.variant}" if cfg.block == "bottleneck" else "") + f" shortcut {cfg.shortcut}"
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    capability = cpu_capability(device) + (" bf16" if native_bf16(device) else "")
    return " | ".join([capability, f"torch {torch.__version__}", model, f"batch {batch_size}", mode,
                       f"{threads} threads"])


def cache_path() -> Path:
    return cache_root() / CACHE_FILE


def read_choices() -> dict:
    """Every remembered choice by key; none if the file is missing or unreadable."""
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def remember(key: str, entry: dict) -> None:
    """Store ``entry`` under ``key``, keeping the other processes' entries. A read-only cache is no error: the choice
    is measured again next time."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(path.with_name(f".{CACHE_FILE}.lock")):
            choices = read_choices()
            choices[key] = entry
            atomic_write_bytes(path, json.dumps(choices, indent=1, sort_keys=True).encode(), durable=False)
    except OSError:
        pass
