"""A run directory: ``config.json`` (resolved config, code version, command line, and the history of deliberate
changes), ``metrics.jsonl`` (one JSON line per evaluation and one at the end), ``checkpoint.pt`` and
``checkpoint.prev.pt``, ``best.safetensors`` / ``last.safetensors`` (+ .json), ``curves.png``, and ``.lock``: the
writer's lock.

One process writes a run at a time. The writer holds an OS lock (``flock``) on ``.lock`` while it runs; the OS drops
it when the process ends, however it ends, so a crashed run never leaves a stale lock and the next ``--resume`` just
works, while a second writer started before the first has ended (a requeue, a double submit) is refused.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..errors import UsageError
from ..files import atomic_write_bytes, lock_file
from .metrics import METRICS, Evaluation, Final, Metrics, dumps, lines, read_metrics

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock
    fcntl = None

LOCK = ".lock"


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
        self._lock: int | None = None

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def create(self) -> None:
        """Make the folder and check that it is writable before any training time is spent."""
        if not self.enabled:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"cannot write the run directory {self.path}: {e.strerror or e}; "
                             "choose a writable folder with --out") from None

    def lock(self) -> str | None:
        """Become the run's one writer: raises UsageError naming the process that is writing it already. Returns a
        warning if the file system cannot lock (the run then goes on unguarded)."""
        if not self.enabled or fcntl is None or self._lock is not None:
            return None
        path = self.path / LOCK
        try:
            fd = lock_file(path, wait=False)
        except OSError as e:
            if e.filename is not None:  # the lock file itself could not be opened
                raise UsageError(f"cannot write the run directory {self.path}: {e.strerror or e}; "
                                 "choose a writable folder with --out") from None
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = path.read_text(errors="replace")[:200].strip() or "a process"
                raise UsageError(f"{self.path} is being written by another run ({holder}); wait for it to end or stop "
                                 "it, then rerun (the lock goes when its process does)") from None
            return f"cannot lock {path} ({e.strerror or e}); nothing stops a second process writing this run"
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock = fd
        return None

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the file frees the lock; the file stays, its holder unlocked
            self._lock = None

    def read_config(self) -> dict | None:
        """The run's ``config.json``, or None if it has none (or one cut short by a crash)."""
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return config if isinstance(config, dict) else None

    def write_config(self, config: dict) -> None:
        if not self.enabled:
            return
        config = dict(config, code_version=code_version(), command=sys.argv, torch=torch.__version__,
                      python=sys.version.split()[0])
        atomic_write_bytes(self.path / "config.json", (json.dumps(config, indent=2, default=str) + "\n").encode())

    def log(self, record: Evaluation | Final) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(dumps(record))

    def metrics(self) -> Metrics:
        return read_metrics(self.metrics_path)

    def truncate_metrics(self, step: int) -> None:
        """On resume: drop the records written after the checkpoint's step, and the final one (they will be written
        again); the lines kept stay as they were written."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = [text for text, r in lines(self.metrics_path) if isinstance(r, Evaluation) and r.step <= step]
        self.metrics_path.write_text("".join(text + "\n" for text in kept))


def writer(path: str | Path) -> str | None:
    """Who is writing the run in ``path`` now (its lock file's ``PID N on HOST``), or None when no process holds its
    lock (finished, stopped, crashed, never started)."""
    lock = Path(path) / LOCK
    if fcntl is None or not lock.exists():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.read(fd, 200).decode(errors="replace").strip() or "a process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def changed_settings(before: dict, now: dict, names) -> dict[str, tuple]:
    """The settings among ``names`` whose value in ``now`` differs from ``before`` (settings ``before`` does not
    record are not compared): name -> (before, now)."""
    def same(a, b):
        return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))  # tuple == list

    return {k: (before[k], now.get(k)) for k in names if k in before and not same(before[k], now.get(k))}
