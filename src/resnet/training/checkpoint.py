"""Training checkpoints: everything needed to continue a run exactly, written atomically, read without pickle code.

``RUN_DIR/checkpoint.pt`` holds the model, optimiser, step, schedule state and every random generator state. It is
written to a temporary file, flushed and renamed, so a crash or a full disk while saving leaves the previous
checkpoint intact. It is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from ..errors import UsageError
from ..weights.format import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


class CheckpointError(UsageError):
    pass


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no earlier checkpoint existed"
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
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it contains objects other than tensors and plain data "
                              f"({str(e).splitlines()[0][:120]}); only load checkpoints you trust") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(e).splitlines()[0][:120]}); "
                              "delete it to restart, or restore a copy") from None
