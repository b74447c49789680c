"""Training checkpoints: everything needed to continue a run exactly, written atomically, checked on load, read
without pickle code.

``RUN_DIR/checkpoint.pt`` holds the model, optimiser, step, schedule state and every random generator state, and
``checkpoint.prev.pt`` the one before it. A new checkpoint is written to a temporary file and flushed, the current one
becomes the previous one, and the new one takes its name, so a crash or a full disk while saving leaves the last good
checkpoint intact. Each carries the sha256 of its contents (``"sha256"``, over every tensor's bytes and every other
value), so a file damaged after it was written (a flipped bit, a tail the OS never flushed) is named as such, and the
run resumes from the previous checkpoint instead. Checkpoints are read with ``torch.load(weights_only=True)``: tensors
and plain containers only, no code. Checkpoints without a checksum (written before it existed) load as they are.

On disk a checkpoint is a plain dict (``Checkpoint.contents``: ``model``, ``optimizer``, ``state``, ``rng``,
``model_config``, ``config``); in the program it is a ``Checkpoint``, its run state a ``RunState``.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
from dataclasses import asdict, dataclass, fields
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


@dataclass
class RunState:
    """What a checkpoint carries besides weights, optimiser and random generators (the ``state`` of checkpoint.pt)."""
    step: int = 0
    best_val_error: float = math.inf
    plateau_drops: int = 0  # the plateau schedule (Sec. 3.4): /10 drops so far, the best error, evaluations without
    plateau_best: float = math.inf  # improvement
    plateau_bad: int = 0
    seconds: float = 0.0  # wall time of the run so far (steps, evaluations, checkpoints), summed over sessions

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        """A checkpoint's ``state``; what an older one lacks keeps its default."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def plateau_update(self, val_error: float, patience: int) -> None:
        """Sec. 3.4: divide the learning rate by 10 when the error plateaus."""
        if val_error < self.plateau_best - 1e-3:
            self.plateau_best, self.plateau_bad = val_error, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad >= patience:
                self.plateau_drops += 1
                self.plateau_bad = 0


@dataclass
class Checkpoint:
    """Everything a run continues from exactly: the net's and the optimiser's state dicts, the run state, every random
    generator's state, and the model's and the run's settings it was saved with (None in a checkpoint older than
    them)."""
    model: dict
    optimizer: dict
    state: RunState
    rng: dict
    model_config: dict | None = None
    config: dict | None = None

    def contents(self) -> dict:
        """What ``torch.save`` writes: plain containers and tensors, keys in this order (the checksum follows it)."""
        return {"model": self.model, "optimizer": self.optimizer, "state": asdict(self.state), "rng": self.rng,
                "model_config": self.model_config, "config": self.config}

    @classmethod
    def from_contents(cls, contents: dict) -> "Checkpoint":
        return cls(model=contents["model"], optimizer=contents["optimizer"],
                   state=RunState.from_dict(contents["state"]), rng=contents["rng"],
                   model_config=contents.get("model_config"), config=contents.get("config"))

    def save(self, run_dir: str | Path) -> Path:
        return save_checkpoint(run_dir, self.contents(), step=self.state.step)

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        """The checkpoint in ``path`` (a file, or a run directory's newest), checked and typed."""
        return cls.from_contents(load_checkpoint(path))


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


def save_checkpoint(run_dir: str | Path, state: dict, step: int | None = None) -> Path:
    """Write ``state`` (a checkpoint's contents, any dict of tensors and plain data) atomically, with its checksum;
    ``step`` names the run's step in the error a failed save raises."""
    path = Path(run_dir) / CHECKPOINT
    buf = io.BytesIO()
    torch.save(dict(state, **{CHECKSUM: checksum(state)}), buf)
    try:
        atomic_write_bytes(path, buf.getvalue(), keep_previous=PREVIOUS)  # the one before is kept as the fallback
    except OSError as e:
        files = checkpoint_files(run_dir)
        kept = f"the previous checkpoint {files[0]} is intact" if files else "no earlier checkpoint existed"
        raise CheckpointError(f"could not save checkpoint{'' if step is None else f' at step {step}'}: "
                              f"{e.strerror or e}; {kept}; free disk space and rerun with --resume") from None
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint file's contents (a run directory: its newest), checked against their checksum."""
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


def load_latest_checkpoint(run_dir: str | Path,
                           warn: Callable[[str], None] = lambda message: None) -> Checkpoint | None:
    """The newest good checkpoint of a run (None if it has none). A corrupt newest one is reported through ``warn``
    and the previous one is used; a file that carries code is refused outright, never skipped."""
    files = checkpoint_files(run_dir)
    if not files:
        return None
    if files[0].name == PREVIOUS:  # a crash between the two renames of a save
        warn(f"{Path(run_dir) / CHECKPOINT} is missing; resuming from the previous checkpoint {files[0]}")
    try:
        return Checkpoint.load(files[0])
    except CorruptCheckpoint as newest:
        if len(files) < 2:
            raise
        try:
            previous = Checkpoint.load(files[1])
        except CorruptCheckpoint as damaged:
            raise CorruptCheckpoint(f"both checkpoints of {run_dir} are damaged: {newest}; and {damaged}") from None
        warn(f"{str(newest).split(';')[0]}; resuming from the previous checkpoint {files[1]} "
             f"(step {previous.state.step})")
        return previous
