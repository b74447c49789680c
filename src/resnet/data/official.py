"""The official python version of CIFAR-10 and CIFAR-100: where each lives, its download, and a reader of its
pickles.

The official files are pickles; they are read by an unpickler that can build nothing but dicts, lists, strings, numbers
and numpy arrays, so a malicious file cannot run code. The archive is md5-checked (torchvision's checksums). What is read
comes back as numpy arrays; ``data.cifar`` turns them into image sets, as it does every other form of the data.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import lzma
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..files import atomic_path

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # part ("train", "test") -> uint8 images (N, 3, 32, 32), int64 labels


@dataclass(frozen=True)
class Official:
    """Where the official python version of a CIFAR dataset lives and what is inside (torchvision's checksums)."""

    folder: str
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


OFFICIAL = {
    "cifar10": Official("cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                        "labels", "label_names"),
    "cifar100": Official("cifar-100-python", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                         ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what CIFAR batches hold (dicts, lists, bytes, str, numbers, numpy arrays): every global but the
    three that rebuild a numpy array is refused, so a crafted file cannot call anything."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        if name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core; both names mean this
            return core.multiarray._reconstruct
        return getattr(np, name)


def safe_unpickle(data: bytes, name: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 (truncated, corrupt or malicious: whatever it raises, the file is unusable)
        raise DataError(f"{name} is not a CIFAR pickle ({type(e).__name__}: {e}): delete it and download the "
                         "official archive again") from None


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}): restore the file or download the archive again") \
            from None


def read_batches(off: Official, read: Callable[[str], bytes]) -> tuple[list[str], Arrays]:
    """The class names and the parts of the official files, each read by ``read(file name)``."""
    meta = _str_keys(safe_unpickle(read(off.meta_file), off.meta_file))
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(off.names_key, [])]
    if not classes:
        raise DataError(f"{off.meta_file} lists no class names ({off.names_key}): download the archive again")
    parts = {}
    for part, files in (("train", off.train_files), ("test", off.test_files)):
        images, labels = zip(*(_batch_arrays(read(f), f, off.label_key, len(classes)) for f in files))
        images = np.concatenate(images).reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32
        parts[part] = images, np.concatenate(labels)
    return classes, parts


def _batch_arrays(data: bytes, name: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(safe_unpickle(data, name))
    images, labels = batch.get("data"), np.asarray(batch.get(label_key, []), dtype=np.int64)
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
            or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels)
            or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes)):
        raise DataError(f"{name} does not hold CIFAR images and labels: delete it and download the archive again")
    return images, labels


def _str_keys(obj) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"a CIFAR pickle holds a dict, not {type(obj).__name__}: download the archive again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_archive(off: Official, path: Path) -> tuple[list[str], Arrays]:
    """``read_batches`` of the official archive, after its md5 is checked."""
    digest = md5sum(path)
    if digest != off.md5:
        raise DataError(f"{path} has md5 {digest}, not {off.md5}: it is corrupt or incomplete; delete it and download "
                         f"{off.url} again")
    wanted = {f"{off.folder}/{f}" for f in (off.meta_file, *off.train_files, *off.test_files)}
    files = {name: data for name, data in iter_tar(path, lambda n: n in wanted)}
    missing = sorted(wanted - set(files))
    if missing:
        raise DataError(f"{path} lacks {missing[0]}: download {off.url} again")
    return read_batches(off, lambda name: files[f"{off.folder}/{name}"])


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def iter_tar(path: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the wanted regular files of a (compressed) tar, read in one pass without extracting, with a
    progress bar over the archive's bytes."""
    with open(path, "rb") as raw, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, leave=False,
                                       desc=f"reading {path.name}", disable=None) as bar:
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                for member in tar:
                    bar.update(raw.tell() - bar.n)
                    name = member.name.removeprefix("./")
                    if member.isfile() and wanted(name):
                        yield name, tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise DataError(f"{path} is truncated or not a tar archive ({e}): delete it and download it again") \
                from None


def fetch(dataset: str, root: Path, download: bool) -> Path:
    """Download the official archive of ``dataset`` into ``root`` and return its path; offline, one line that says what
    to fetch and where to put it."""
    off = OFFICIAL[dataset]
    how = f"put {off.archive} ({off.url}) there, or pass --data-dir DIR with it or an image tree train/<class>/"
    if not download:
        raise DataError(f"no {dataset} data in {root}: {how}")
    dest = root / off.archive
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if the download fails
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_file(off.url, dest)
    except (OSError, ValueError, http.client.HTTPException) as e:
        for folder in created:  # deepest first: a mistyped --data-dir is not left behind, empty
            try:
                folder.rmdir()
            except OSError:
                break
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__
        raise DataError(f"no {dataset} data in {root}, and it could not be downloaded ({reason}): {how}") from None
    return dest


def download_file(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` with a progress bar; the file appears only when complete."""
    with atomic_path(dest, durable=False) as tmp, urllib.request.urlopen(url, timeout=30) as response, \
            open(tmp, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
