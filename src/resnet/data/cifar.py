"""CIFAR-10/100 as uint8 tensors, from every form a user has (docs/data.md).

Sources, found in ``data_dir`` in this order: the official python version (``cifar-10-batches-py/``,
``cifar-100-python/``), the official archive (``cifar-10-python.tar.gz``, md5-checked), an ImageFolder tree
(``train/<class>/*.png``, optional ``test/<class>/*``) and a tar archive of such a tree. Nothing found: the official
archive is downloaded. The official files are pickles; they are read by an unpickler that can build nothing but dicts,
lists, strings, numbers and numpy arrays, so a malicious file cannot run code. Archives and image trees are decoded once
and cached as ``.npz`` (key: path, size, mtime).

Splits follow the paper (Sec. 4.2): "val" is a fixed 10% of each class of the 50k training images (5k), "train" is the
other 45k, "trainval" all 50k, "test" the official 10k test images.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import lzma
import os
import pickle
import re
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError, UsageError, choices
from ..files import atomic_path, cache_root
from . import embedded
from .decode import CIFAR_TREE_EXTENSIONS

DATASETS = ("cifar10", "cifar100", "embedded", "synthetic")
SPLITS = ("train", "val", "trainval", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
IMAGE_SUFFIXES = CIFAR_TREE_EXTENSIONS
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")
PARTS = ("train", "val", "test")  # top-level folders of an ImageFolder tree

# Sec. 4.2: "45k/5k train/val split". The held-out choice is a function of this constant only, never of the training
# seed, so every run of every experiment validates on the same 5k images.
VAL_FRACTION = 0.1
SPLIT_SEED = 1512_03385  # the paper's arXiv number
CACHE_VERSION = 1


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


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, (N, 3, H, W), contiguous
    labels: torch.Tensor  # int64, (N,)
    classes: list[str]  # class names in label order

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images at ``index`` (integer indices or a boolean mask), copied."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        if self.images.device.type == "cpu":  # numpy gathers uint8 rows several times faster than torch does
            images = torch.from_numpy(np.take(self.images.numpy(), index.numpy(), axis=0))
        else:
            images = self.images.index_select(0, index.to(self.images.device))
        return ImageSet(images, self.labels[index.to(self.labels.device)].contiguous(), list(self.classes))


def cache_dir() -> Path:
    return cache_root()


def default_data_dir() -> Path:
    return Path(os.environ.get("RESNET_DATA") or cache_dir() / "data")


def load_split(dataset: str, data_dir: str | os.PathLike | None, split: str, *, seed: int = 0,
               download: bool = True) -> ImageSet:
    """One split of a dataset as uint8 tensors. ``seed`` only seeds the "synthetic" images; the train/val split is
    fixed (see ``held_out_mask``). ``data_dir`` is ignored for "embedded" and "synthetic"."""
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; choose from {choices(DATASETS)}")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose from {choices(SPLITS)}")
    if dataset == "synthetic":
        return _synthetic(split, seed)
    if dataset == "embedded":  # "train" (5,000 images), "val" (1,000) or "trainval" (both)
        path = embedded.asset_path()
        return select_split(cached(path, lambda: read_image_archive(path)), split, "the embedded dataset")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    source = find_source(dataset, root)
    if source is None:
        source = _fetch(dataset, root, download)
    parts = read_source(dataset, source)
    if len(parts["train"].classes) != NUM_CLASSES[dataset]:
        raise DataError(f"{source} has {len(parts['train'].classes)} classes but {dataset} has "
                         f"{NUM_CLASSES[dataset]}: pass --data-dir pointing at {dataset} data")
    return select_split(parts, split, str(source))


def select_split(parts: dict[str, ImageSet], split: str, where: str) -> ImageSet:
    """A split of a source's parts. A source with its own validation images (a tree with ``val/``, the embedded set)
    keeps them; otherwise "val" and "train" are the paper's partition of the training images (``held_out_mask``)."""
    if split == "test":
        if "test" not in parts:
            raise UsageError(f"{where} has no test images (only {choices(parts)}): use the images held out of "
                             "training (resnet train --protocol val, resnet eval --split val), or a source with the "
                             "official test set")
        return parts["test"]
    train = parts["train"]
    if "val" in parts:
        if split == "trainval":
            val = parts["val"]
            return ImageSet(torch.cat([train.images, val.images]), torch.cat([train.labels, val.labels]),
                            list(train.classes))
        return parts[split]
    if split == "trainval":
        return train
    val = held_out_mask(train.labels)
    return train.subset(val if split == "val" else ~val)


def held_out_mask(labels: torch.Tensor, fraction: float = VAL_FRACTION) -> torch.Tensor:
    """The validation images (Sec. 4.2): of each class, the ``round(fraction * count)`` images that rank first by a
    fixed hash of their index. A pure function of the labels: the same on every call, machine and library version,
    and independent of any training seed. Balanced: 500 per class of CIFAR-10's 50k."""
    y = labels.numpy()
    keys = _splitmix64(np.arange(len(y), dtype=np.uint64) + np.uint64(SPLIT_SEED))
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_val = int(fraction * len(idx) + 0.5)
        mask[idx[np.argsort(keys[idx], kind="stable")[:n_val]]] = True
    return torch.from_numpy(mask)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fixed, well-mixed hash (uint64 arithmetic wraps around)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _synthetic(split: str, seed: int) -> ImageSet:
    """Random images of CIFAR-10's shape and size (50k training, 10k test, 10 balanced classes), for benchmarks."""
    n = 10_000 if split == "test" else 50_000
    g = torch.Generator().manual_seed(2 * seed + (split == "test"))
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    parts = {"test" if split == "test" else "train": ImageSet(images, labels, list(CIFAR10_CLASSES))}
    return select_split(parts, split, "synthetic")


# ---------------------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    kind: str  # "python" | "archive" | "folder" | "folder_archive"
    path: Path

    def __str__(self) -> str:
        return str(self.path)


def find_source(dataset: str, root: Path) -> Source | None:
    """The first supported form of ``dataset`` in ``root`` (or ``root`` itself, when it is one)."""
    off = OFFICIAL[dataset]
    if root.is_file():
        if root.name == off.archive:
            return Source("archive", root)
        if root.name.endswith(TAR_SUFFIXES):
            return Source("folder_archive", root)
        raise DataError(f"{root} is a file but not a tar archive: pass --data-dir a folder or an archive of images")
    if not root.is_dir():
        return None
    for d in (root / off.folder, root):
        if (d / off.meta_file).is_file() and (d / off.train_files[0]).is_file():
            return Source("python", d)
    if (root / off.archive).is_file():
        return Source("archive", root / off.archive)
    if (root / "train").is_dir():
        return Source("folder", root)
    others = {o.archive for o in OFFICIAL.values()}
    tars = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(TAR_SUFFIXES) and p.name not in others
                  and _tar_dataset(p.name) in (None, dataset) and _looks_like_image_tree(p))
    named = [p for p in tars if _tar_dataset(p.name) == dataset]
    if len(named or tars) > 1:
        raise DataError(f"several image archives in {root} ({choices(p.name for p in named or tars)}): pass the one "
                         "to use as --data-dir")
    return Source("folder_archive", (named or tars)[0]) if tars else None


def _tar_dataset(name: str) -> str | None:
    """Which dataset an archive's name says it holds: 'cifar-100-jpeg.tgz' -> cifar100; None when it does not say."""
    m = re.search(r"cifar[-_ ]?(100|10)(?!\d)", name.lower())
    return f"cifar{m.group(1)}" if m else None


def _looks_like_image_tree(path: Path) -> bool:
    """Whether one of the first files of a tar archive is ``[...]/train|val|test/<class>/<image>``."""
    try:
        with tarfile.open(path, "r|*") as tar:
            files = (m for m in tar if m.isfile())
            return any(_tree_entry(m.name) for _, m in zip(range(10), files))  # allow a README or two first
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError):
        pass
    return False


def _tree_entry(name: str) -> tuple[str, str] | None:
    """(part, class) of an image path ``[prefix/]part/class/file.ext`` of an ImageFolder tree, else None."""
    parts = name.replace("\\", "/").split("/")
    if len(parts) < 3 or parts[-3] not in PARTS or parts[-1].startswith(".") or parts[-2].startswith("."):
        return None
    return (parts[-3], parts[-2]) if parts[-1].lower().endswith(IMAGE_SUFFIXES) else None


def read_source(dataset: str, source: Source) -> dict[str, ImageSet]:
    """All parts ("train", and "test"/"val" when present) of a source. Archives and trees are decoded once, cached."""
    if source.kind == "python":
        return _read_official(OFFICIAL[dataset], lambda name: _read_file(source.path / name))
    if source.kind == "archive":
        return cached(source.path, lambda: _read_official_archive(OFFICIAL[dataset], source.path))
    if source.kind == "folder":
        return cached(source.path, lambda: _decode_tree(_walk_tree(source.path), str(source.path)))
    return cached(source.path, lambda: read_image_archive(source.path))


def _fetch(dataset: str, root: Path, download: bool) -> Source:
    """Download the official archive into ``root``; offline, one line that says what to fetch and where to put it."""
    off = OFFICIAL[dataset]
    how = f"put {off.archive} ({off.url}) there, or pass --data-dir DIR with it or an image tree train/<class>/"
    if not download:
        raise DataError(f"no {dataset} data in {root}: {how}")
    dest = root / off.archive
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if the download fails
    try:
        root.mkdir(parents=True, exist_ok=True)
        _download(off.url, dest)
    except (OSError, ValueError, http.client.HTTPException) as e:
        for folder in created:  # deepest first: a mistyped --data-dir is not left behind, empty
            try:
                folder.rmdir()
            except OSError:
                break
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__
        raise DataError(f"no {dataset} data in {root}, and it could not be downloaded ({reason}): {how}") from None
    return Source("archive", dest)


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` with a progress bar; the file appears only when complete."""
    with atomic_path(dest, durable=False) as tmp, urllib.request.urlopen(url, timeout=30) as response, \
            open(tmp, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


# ------------------------------------------------------------------------------------------ the official pickles
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


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}): restore the file or download the archive again") \
            from None


def _read_official(off: Official, read: Callable[[str], bytes]) -> dict[str, ImageSet]:
    meta = _str_keys(safe_unpickle(read(off.meta_file), off.meta_file))
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(off.names_key, [])]
    if not classes:
        raise DataError(f"{off.meta_file} lists no class names ({off.names_key}): download the archive again")
    parts = {}
    for part, files in (("train", off.train_files), ("test", off.test_files)):
        images, labels = zip(*(_batch_arrays(read(f), f, off.label_key, len(classes)) for f in files))
        images = np.concatenate(images).reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32
        parts[part] = ImageSet(torch.from_numpy(images), torch.from_numpy(np.concatenate(labels)), classes)
    return parts


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


def _read_official_archive(off: Official, path: Path) -> dict[str, ImageSet]:
    digest = md5sum(path)
    if digest != off.md5:
        raise DataError(f"{path} has md5 {digest}, not {off.md5}: it is corrupt or incomplete; delete it and download "
                         f"{off.url} again")
    wanted = {f"{off.folder}/{f}" for f in (off.meta_file, *off.train_files, *off.test_files)}
    files = {name: data for name, data in iter_tar(path, lambda n: n in wanted)}
    missing = sorted(wanted - set(files))
    if missing:
        raise DataError(f"{path} lacks {missing[0]}: download {off.url} again")
    return _read_official(off, lambda name: files[f"{off.folder}/{name}"])


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


# ------------------------------------------------------------------------------------------------ ImageFolder trees
def _walk_tree(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for part in PARTS:
        if not (root / part).is_dir():
            continue
        for cls in sorted(os.listdir(root / part)):
            if cls.startswith(".") or not (root / part / cls).is_dir():
                continue
            for f in sorted(os.listdir(root / part / cls)):
                if _tree_entry(f"{part}/{cls}/{f}"):
                    yield part, cls, f"{part}/{cls}/{f}", _read_file(root / part / cls / f)


def read_image_archive(path: Path) -> dict[str, ImageSet]:
    """The parts of a tar archive of an ImageFolder tree, ``[prefix/]{train,val,test}/<class>/<image>``."""
    def records():
        for name, data in iter_tar(path, lambda n: _tree_entry(n) is not None):
            yield (*_tree_entry(name), name, data)

    return _decode_tree(records(), str(path))


def class_order(names) -> list[str]:
    """CIFAR-10's label order when the folders are exactly its classes, else sorted (which is CIFAR-100's order)."""
    return list(CIFAR10_CLASSES) if set(names) == set(CIFAR10_CLASSES) else sorted(names)


def _decode_tree(records, where: str) -> dict[str, ImageSet]:
    """Decode (part, class, name, bytes) records; images ordered by (class, name) within each part."""
    by_part: dict[str, list] = {}
    for part, cls, name, data in records:
        by_part.setdefault(part, []).append((cls, name, data))
    if "train" not in by_part:
        raise DataError(f"{where} has no images under train/<class>/: lay the tree out as train/<class>/*.png")
    classes = class_order({cls for cls, _, _ in by_part["train"]})
    index = {c: i for i, c in enumerate(classes)}
    parts = {}
    with tqdm(total=sum(map(len, by_part.values())), unit="img", desc=f"decoding {Path(where).name}", leave=False,
              disable=None) as bar:
        for part, items in by_part.items():
            unknown = sorted({cls for cls, _, _ in items} - set(index))
            if unknown:
                raise DataError(f"{where}: {part}/ has classes that train/ lacks ({choices(unknown[:5])})")
            items.sort(key=lambda r: (index[r[0]], r[1]))
            images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
            for i, (_, name, data) in enumerate(items):
                images[i] = decode_image(data, f"{where}:{name}")
                bar.update()
            labels = torch.tensor([index[cls] for cls, _, _ in items], dtype=torch.int64)
            parts[part] = ImageSet(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), labels,
                                   classes)
    return parts


def decode_image(data: bytes, name: str) -> np.ndarray:
    """A 32x32 image file's bytes -> (32, 32, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode {name} ({e}): replace or delete the file") from None
    if rgb.size != (32, 32):
        raise DataError(f"{name} is {rgb.size[0]}x{rgb.size[1]}, not 32x32: resize the images to CIFAR's 32x32")
    return np.asarray(rgb)


# ------------------------------------------------------------------------------------------------------------ cache
def _fingerprint(path: Path) -> str:
    """Path, size and mtime of a file, or of every file of an ImageFolder tree."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    h = hashlib.sha256(str(path).encode())
    for dirpath, dirnames, filenames in (w for part in PARTS for w in os.walk(path / part)):
        dirnames.sort()
        for f in sorted(filenames):
            st = os.stat(os.path.join(dirpath, f))
            h.update(f"{os.path.relpath(os.path.join(dirpath, f), path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached(path: Path, read: Callable[[], dict[str, ImageSet]]) -> dict[str, ImageSet]:
    """``read()``, or its result saved earlier for this very file (same path, size and mtime) under ``cache_dir()``.
    The cache is only ever a speed-up: an unreadable one is rebuilt, an unwritable one skipped."""
    key = hashlib.sha256(f"v{CACHE_VERSION}|{_fingerprint(path)}".encode()).hexdigest()[:20]
    file = cache_dir() / "decoded" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', path.name)}-{key}.npz"
    try:
        with np.load(file, allow_pickle=False) as z:
            classes = [str(c) for c in z["classes"]]
            return {p: ImageSet(torch.from_numpy(z[f"{p}_images"]), torch.from_numpy(z[f"{p}_labels"]), classes)
                    for p in PARTS if f"{p}_images" in z.files}
    except (OSError, ValueError, KeyError, zlib.error, EOFError):
        pass  # not cached yet, or a broken cache file: decode again
    parts = read()
    arrays = {"classes": np.array(next(iter(parts.values())).classes)}
    for p, s in parts.items():
        arrays[f"{p}_images"], arrays[f"{p}_labels"] = s.images.numpy(), s.labels.numpy()
    try:
        _atomic_savez(file, arrays)
    except OSError:
        pass  # a read-only home: work without a cache
    return parts


def _atomic_savez(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary file next to ``file``, then rename: readers never see half a cache file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file, durable=False) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
