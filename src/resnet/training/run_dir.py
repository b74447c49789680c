"""A run directory: ``config.json`` (resolved config, code version, command line), ``metrics.jsonl`` (one JSON line per
evaluation and one at the end), ``checkpoint.pt``, ``best.safetensors`` / ``last.safetensors`` (+ .json) and
``curves.png``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..errors import UsageError


def code_version() -> str:
    """The git commit of the code (with ``-dirty`` for uncommitted changes), or the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return __version__
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{sha.stdout.strip()}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


class RunDir:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled  # only rank 0 writes

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def create(self) -> None:
        """Make the folder and check that it is writable before any training time is spent."""
        if not self.enabled:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"cannot write the run directory {self.path}: {e.strerror or e}; "
                             "choose a writable folder with --out") from None

    def write_config(self, config: dict) -> None:
        if not self.enabled:
            return
        config = dict(config, code_version=code_version(), command=sys.argv, torch=torch.__version__,
                      python=sys.version.split()[0])
        (self.path / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path) if self.metrics_path.exists() else []

    def truncate_metrics(self, step: int) -> None:
        """On resume: drop records written after the checkpoint's step (they will be written again)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = [r for r in self.metrics() if r.get("step", 0) <= step and not r.get("final")]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
    return records
