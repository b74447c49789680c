"""Training checkpoints: everything needed to continue a run exactly, written atomically, checked on load, read
without pickle code.

``RUN_DIR/checkpoint.pt`` holds the model, optimiser, step, schedule state and every random generator state, and
``checkpoint.prev.pt`` the one before it. A new checkpoint is written to a temporary file and flushed, the current one
becomes the previous one, and the new one takes its name, so a crash or a full disk while saving leaves the last good
checkpoint intact. Each carries the sha256 of its contents (``"sha256"``, over every tensor's bytes and every other
value), so a file damaged after it was written (a flipped bit, a tail the OS never flushed) is named as such, and the
run resumes from the previous checkpoint instead. Checkpoints are read with ``torch.load(weights_only=True)``: tensors
and plain containers only, no code. Checkpoints without a checksum (written before it existed) load as they are.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError
from ..files import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
CHECKSUM = "sha256"


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file whose contents are damaged (as opposed to missing, or refused for carrying code)."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checksum(state) -> str:
    """sha256 of a checkpoint's contents: keys and values in order, each tensor's dtype, shape and bytes, every other
    value by its repr (exact for floats). It depends on the contents, not on how ``torch.save`` laid them out."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}:".encode())
            for k, v in x.items():
                feed(k)
                feed(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__[0]}{len(x)}:".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"{type(x).__name__}={x!r};".encode())

    feed(state)
    return h.hexdigest()


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT
    buf = io.BytesIO()
    torch.save(dict(state, **{CHECKSUM: checksum(state)}), buf)
    try:
        atomic_write_bytes(path, buf.getvalue(), keep_previous=PREVIOUS)  # the one before is kept as the fallback
    except OSError as e:
        files = checkpoint_files(run_dir)
        kept = f"the previous checkpoint {files[0]} is intact" if files else "no earlier checkpoint existed"
        raise CheckpointError(f"could not save checkpoint at step {state.get('step')}: {e.strerror or e}; {kept}; "
                              "free disk space and rerun with --resume") from None
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; start without --resume, or point --out at the run to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it contains objects other than tensors and plain data "
                              f"({str(e).splitlines()[0][:120]}); only load checkpoints you trust") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CorruptCheckpoint(f"{path} is corrupt or truncated ({str(e).splitlines()[0][:120]}); "
                                "delete it to restart, or restore a copy") from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{path} is corrupt: it holds a {type(state).__name__}, not a checkpoint")
    expected = state.pop(CHECKSUM, None)
    if expected is not None and checksum(state) != expected:
        raise CorruptCheckpoint(f"{path} is corrupt: its contents do not match their sha256 checksum; "
                                "delete it to restart, or restore a copy")
    return state


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints that exist, newest first."""
    return [p for p in (Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS) if p.exists()]


def load_latest_checkpoint(run_dir: str | Path, warn: Callable[[str], None] = lambda message: None) -> dict | None:
    """The newest good checkpoint of a run (None if it has none). A corrupt newest one is reported through ``warn``
    and the previous one is used; a file that carries code is refused outright, never skipped."""
    files = checkpoint_files(run_dir)
    if not files:
        return None
    if files[0].name == PREVIOUS:  # a crash between the two renames of a save
        warn(f"{Path(run_dir) / CHECKPOINT} is missing; resuming from the previous checkpoint {files[0]}")
    try:
        return load_checkpoint(files[0])
    except CorruptCheckpoint as newest:
        if len(files) < 2:
            raise
        try:
            state = load_checkpoint(files[1])
        except CorruptCheckpoint as previous:
            raise CorruptCheckpoint(f"both checkpoints of {run_dir} are damaged: {newest}; and {previous}") from None
        warn(f"{str(newest).split(';')[0]}; resuming from the previous checkpoint {files[1]} "
             f"(step {state['state']['step']})")
        return state
