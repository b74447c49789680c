"""CIFAR-10/100 as uint8 tensors, from every form a user has (docs/data.md).

Sources, found in ``data_dir`` in this order: the official python version (``cifar-10-batches-py/``,
``cifar-100-python/``), the official archive (``cifar-10-python.tar.gz``, md5-checked), an ImageFolder tree
(``train/<class>/*.png``, optional ``test/<class>/*``) and a tar archive of such a tree. Nothing found: the official
archive is downloaded. The official files and their download are ``data.official``'s. Archives and image trees are
decoded once and cached as ``.npz`` (key: path, size, mtime).

Which dataset a name means, and its number of classes, is the registry's (``data.sources``): it calls the readers here.

Splits follow the paper (Sec. 4.2): "val" is a fixed 10% of each class of the 50k training images (5k), "train" is the
other 45k, "trainval" all 50k, "test" the official 10k test images.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import tarfile
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
from . import official
from .decode import CIFAR_TREE_EXTENSIONS
from .official import iter_tar, read_file

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = CIFAR_TREE_EXTENSIONS
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")
PARTS = ("train", "val", "test")  # top-level folders of an ImageFolder tree

# Sec. 4.2: "45k/5k train/val split". The held-out choice is a function of this constant only, never of the training
# seed, so every run of every experiment validates on the same 5k images.
VAL_FRACTION = 0.1
SPLIT_SEED = 1512_03385  # the paper's arXiv number
CACHE_VERSION = 1


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


def default_data_dir() -> Path:
    return Path(os.environ.get("RESNET_DATA") or cache_root() / "data")


def load_cifar(dataset: str, num_classes: int, data_dir: str | os.PathLike | None, split: str, *,
               download: bool = True) -> ImageSet:
    """One split of CIFAR-10 or CIFAR-100 (``dataset``, of ``num_classes``) as uint8 tensors, from whichever form
    ``data_dir`` holds (the module's docstring), downloaded there when it holds none. The train/val split is fixed
    (``held_out_mask``)."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    source = find_source(dataset, root) or Source("archive", official.fetch(dataset, root, download))
    parts = read_source(dataset, source)
    if len(parts["train"].classes) != num_classes:
        raise DataError(f"{source} has {len(parts['train'].classes)} classes but {dataset} has "
                         f"{num_classes}: pass --data-dir pointing at {dataset} data")
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


def synthetic(split: str, seed: int) -> ImageSet:
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
    kind: str  # "python" | "archive" | "tree" | "folder_archive"
    path: Path

    def __str__(self) -> str:
        return str(self.path)


def find_source(dataset: str, root: Path) -> Source | None:
    """The first supported form of ``dataset`` in ``root`` (or ``root`` itself, when it is one)."""
    off = official.OFFICIAL[dataset]
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
        return Source("tree", root)
    others = {o.archive for o in official.OFFICIAL.values()}
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
    off = official.OFFICIAL[dataset]
    if source.kind == "python":
        return _image_sets(*official.read_batches(off, lambda name: read_file(source.path / name)))
    if source.kind == "archive":
        return cached(source.path, lambda: _image_sets(*official.read_archive(off, source.path)))
    if source.kind == "tree":
        return cached(source.path, lambda: _decode_tree(_walk_tree(source.path), str(source.path)))
    return cached(source.path, lambda: read_image_archive(source.path))


# ------------------------------------------------------------------------------------------------ ImageFolder trees
def _image_sets(classes: list[str], arrays: official.Arrays) -> dict[str, ImageSet]:
    return {part: ImageSet(torch.from_numpy(x), torch.from_numpy(y), classes) for part, (x, y) in arrays.items()}


def _walk_tree(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for part in PARTS:
        if not (root / part).is_dir():
            continue
        for cls in sorted(os.listdir(root / part)):
            if cls.startswith(".") or not (root / part / cls).is_dir():
                continue
            for f in sorted(os.listdir(root / part / cls)):
                if _tree_entry(f"{part}/{cls}/{f}"):
                    yield part, cls, f"{part}/{cls}/{f}", read_file(root / part / cls / f)


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
    """``read()``, or its result saved earlier for this very file (same path, size and mtime) under the cache root.
    The cache is only ever a speed-up: an unreadable one is rebuilt, an unwritable one skipped."""
    key = hashlib.sha256(f"v{CACHE_VERSION}|{_fingerprint(path)}".encode()).hexdigest()[:20]
    file = cache_root() / "decoded" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', path.name)}-{key}.npz"
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
