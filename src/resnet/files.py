"""Files the package writes: atomically (a reader or a crash never sees half a file), under an OS lock where several
processes update one file, and, for what it caches, under one root.

The cache root is ``$RESNET_CACHE`` if set, else ``$XDG_CACHE_HOME/resnet``, else ``~/.cache/resnet``: decoded
CIFAR images (``decoded/``), downloads (``data/``, unless ``$RESNET_DATA``), image-folder statistics of read-only
data folders (``stats-*/``), the runtime choices (``runtime-choices.json``) and the fused CPU kernel's builds
(``torch_extensions/``) all live there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock
    fcntl = None


def cache_root() -> Path:
    """Where the package caches what it can compute again (see the module's docstring)."""
    if os.environ.get("RESNET_CACHE"):
        return Path(os.environ["RESNET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True, keep_previous: str | None = None) -> Iterator[Path]:
    """A temporary file next to ``path`` for the caller (or a library) to write; when the block ends without an error
    it replaces ``path`` in one rename, else it is removed and ``path`` is left as it was.

    ``durable``: the data and the rename reach the disk before the block returns (fsync of the file and its folder),
    so that a crash right after cannot bring back the older file. ``keep_previous``: a file name in the same folder
    that receives the file being replaced (a checkpoint keeps the one before it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # hidden, and one per process
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(keep_previous))
        os.replace(tmp, path)
        if durable:
            _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kw) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, **kw) as tmp, open(tmp, "wb") as f:
        f.write(data)


def lock_file(path: str | os.PathLike, *, wait: bool = True) -> int | None:
    """Take an exclusive OS lock (``flock``) on the file ``path``, created if missing, and return the descriptor that
    holds it: closing it frees the lock, and so does the end of the process however it ends, so no lock is ever left
    stale. None where the platform has no ``flock`` (nothing is locked). ``wait=False``: raise ``BlockingIOError`` at
    once if another process holds the lock. Raises ``OSError`` if the file cannot be opened or locked."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """The block runs holding :func:`lock_file` on ``path`` (waiting for another holder to let go): a read-modify-write
    of a file that several processes update loses none of their updates."""
    fd = lock_file(path)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds it (where the platform allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
