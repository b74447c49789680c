"""Image-folder datasets (``DIR/train/<class>/*``, ``DIR/val/<class>/*``) and the training batches drawn from them.

Files may be JPEG, PNG, WebP or BMP of any size and mode (see :mod:`resnet.data.decode`). Files that cannot be used are
skipped with one warning line each and counted: empty and non-image files when the folder is scanned (from their
first bytes), truncated, corrupt and oversized ones when they are decoded (the sample is then replaced by the next
readable one). ``strict=True`` makes any of them a :class:`~resnet.errors.UsageError`.

The ``imagenet`` flavour is the same layout with the 1000 ImageNet class folders (WordNet ids such as n01440764),
and gives their human-readable names.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

import torch

from ..errors import DataError, UsageError, choices
from .batches import epoch_order
from .decode import IMAGE_EXTENSIONS, MAX_PIXELS, BadImageError, check_file, load_rgb
from .normalize import Normalization
from .transforms import Lighting, TrainAugment, affine, normalize_batch, sample_rng

log = logging.getLogger("resnet.data")

WNID = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000


def imagenet_class_names() -> list[str]:
    """The 1000 human-readable ImageNet names, in sorted-wnid order, as torchvision ships them
    (``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``). Read from torchvision's source list without importing
    its model zoo (seconds), where that list is where it has long been."""
    try:
        source = Path(importlib.util.find_spec("torchvision").origin).parent / "models" / "_meta.py"
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_IMAGENET_CATEGORIES":
                names = ast.literal_eval(node.value)
                if len(names) == IMAGENET_CLASSES:
                    return list(names)
    except (AttributeError, OSError, SyntaxError, ValueError):
        pass
    # the model zoo takes seconds to import: only when torchvision's source list is missing
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 WordNet ids in label order (sorted; n01440764 is class 0), shipped in the package: the
    link between a folder named by synset and the human-readable names torchvision's weights carry."""
    return (resources.files("resnet") / "assets" / "imagenet_wnids.txt").read_text().split()


def class_folders(split_dir: Path) -> list[str]:
    """The sorted class folder names of a split (no files are read)."""
    try:
        entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(f"no such folder: {split_dir} (expected {split_dir}/<class>/<image files>)") from None
    except NotADirectoryError:
        raise DataError(f"{split_dir} is not a folder (expected {split_dir}/<class>/<image files>)") from None
    folders = [e.name for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")]
    if not folders:
        loose = sum(1 for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        hint = (f"it holds {loose} images directly; sort them into one sub-folder per class (for ImageNet's val, "
                f"e.g. with the valprep.sh script)" if loose else "add one sub-folder of images per class")
        raise DataError(f"{split_dir} has no class folders: {hint}")
    return folders


def _walk(folder: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):  # hidden files (.DS_Store, ._x.jpg) are not data
                yield os.path.join(dirpath, name)


@dataclass
class ImageFolderDataset:
    """The scanned files of one split: ``samples`` are (path, class index); ``skipped`` are (path, reason)."""

    root: Path
    split: str
    classes: list[str]  # folder names; the class index is the position here
    class_names: list[str]  # human-readable names (the folder names, or ImageNet's names)
    samples: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    flavour: str = "folder"
    strict: bool = False
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        self._reported = {p for p, _ in self.skipped}

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int, min_short_side: int | None = None):
        """Sample ``index`` as an RGB PIL image (raises BadImageError)."""
        return load_rgb(self.samples[index][0], min_short_side, self.max_pixels)

    def bad_file(self, path: str, reason: str) -> None:
        """Report a file found unusable while decoding: fatal when strict, else one warning line."""
        if self.strict:
            raise DataError(f"{path}: {reason} (remove the file, or drop strict mode to skip such files)")
        if path not in self._reported:  # one line per file, however often it is drawn
            self._reported.add(path)
            self.skipped.append((path, reason))
            log.warning(f"warning: skipping {path}: {reason}")


def open_image_folder(root: str | os.PathLike, split: str = "train", flavour: str = "auto",
                      classes: list[str] | None = None, strict: bool = False, verify: bool = True,
                      max_pixels: int = MAX_PIXELS, threads: int = 16) -> ImageFolderDataset:
    """Scan ``root/split/<class>/*``.

    ``classes``: the training classes (the label order). For a split other than ``train`` it defaults to the class
    folders of ``root/train`` when that exists, so that labels agree with the model; a class unknown to it is an error.
    ``verify``: read each file's first bytes to skip empty and non-image files now rather than at decode time.
    """
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown dataset flavour {flavour!r}; choose one of: {choices(FLAVOURS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such data folder: {root} (expected {root}/train/<class>/ and {root}/val/<class>/)")
    split_dir = root / split
    found = class_folders(split_dir)
    if classes is None and split != "train" and (root / "train").is_dir():
        classes = class_folders(root / "train")
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in set(classes)]
        if unknown:
            raise DataError(f"{split_dir / unknown[0]} is a class the training set does not have "
                             f"({len(unknown)} such folder{'s' if len(unknown) > 1 else ''}); remove it or add "
                             f"{root / 'train' / unknown[0]}")
    if flavour == "auto":
        flavour = "imagenet" if len(classes) == IMAGENET_CLASSES and all(WNID.match(c) for c in classes) else "folder"
    names = CLASS_NAMES[flavour](classes, split_dir)
    samples, skipped = _scan(split_dir, found, {c: i for i, c in enumerate(classes)}, strict, verify, threads)
    return ImageFolderDataset(root, split, list(classes), names, samples, skipped, flavour, strict, max_pixels)


def _imagenet_names(classes: list[str], split_dir: Path) -> list[str]:
    """ImageNet's human-readable names, once the folders are checked to be its 1000 synsets."""
    wrong = [c for c in classes if not WNID.match(c)]
    if len(classes) != IMAGENET_CLASSES or wrong:
        what = f"folder {wrong[0]!r} is not a WordNet id" if wrong else f"it has {len(classes)} class folders"
        raise DataError(f"{split_dir} is not the ImageNet layout: {what}; ImageNet needs the "
                         f"{IMAGENET_CLASSES} wnid folders (n01440764, ...), or use flavour 'folder'")
    return imagenet_class_names()


# Each flavour's class names: the folder names themselves, or ImageNet's ("auto" picks one by the folders' names).
CLASS_NAMES = {"folder": lambda classes, split_dir: list(classes), "imagenet": _imagenet_names}
FLAVOURS = ("auto", *CLASS_NAMES)


def _scan(split_dir: Path, found: list[str], index: dict[str, int], strict: bool, verify: bool,
          threads: int) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """(samples, skipped files) of the class folders ``found`` of a split: every image file, less those whose first
    bytes are not an image (``verify``), each skip warned about (fatal when ``strict``)."""
    listed = {c: list(_walk(split_dir / c)) for c in found}
    skipped = [(p, f"not an image (extension {os.path.splitext(p)[1] or 'none'})")
               for files in listed.values() for p in files if not p.lower().endswith(IMAGE_EXTENSIONS)]
    candidates = [(p, c) for c, files in listed.items() for p in files if p.lower().endswith(IMAGE_EXTENSIONS)]
    reasons: list[str | None] = [None] * len(candidates)
    if verify and candidates:  # the first bytes of every file, read by a few threads (the time is I/O waits)
        with ThreadPoolExecutor(max(1, min(threads, len(candidates) // 64 + 1))) as pool:
            reasons = list(pool.map(check_file, [p for p, _ in candidates], chunksize=256))
    skipped += [(p, r) for (p, _), r in zip(candidates, reasons) if r is not None]
    samples = [(p, index[c]) for (p, c), r in zip(candidates, reasons) if r is None]
    per_class = Counter(c for (_, c), r in zip(candidates, reasons) if r is None)
    bad_in_class = Counter(c for c, files in listed.items() for _ in files) - per_class

    for path, reason in skipped:
        if strict:
            raise DataError(f"{path}: {reason} (remove the file, or drop strict mode to skip such files)")
        log.warning(f"warning: skipping {path}: {reason}")
    empty = [c for c in found if per_class[c] == 0]
    if empty:
        what = "no readable images" if bad_in_class[empty[0]] else "no images"
        raise DataError(f"class folder {split_dir / empty[0]} has {what}"
                         f"{f' (and {len(empty) - 1} more such folders)' if len(empty) > 1 else ''}; "
                         f"add images or remove the folder")
    if skipped:
        kinds = Counter(reason.split(" (")[0] for _, reason in skipped)
        log.warning(f"warning: {split_dir}: skipped {len(skipped)} of {len(samples) + len(skipped)} files ("
                    + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + ")")
    return samples, skipped


# ----------------------------------------------------------------------------------------------------------------
# Training batches


class _TrainSamples(torch.utils.data.Dataset):
    """Item (epoch, index) -> (uint8 crop (3, H, W), label, lighting draw (3,), files that failed on the way)."""

    def __init__(self, dataset: ImageFolderDataset, augment: TrainAugment, seed: int):
        self.samples, self.augment, self.seed = dataset.samples, augment, seed
        self.strict, self.max_pixels = dataset.strict, dataset.max_pixels
        self.known_bad: set[int] = set()  # per worker process

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        failed = []
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            if i in self.known_bad:
                continue
            rng = sample_rng(self.seed, epoch, i)
            alpha = (rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0))
            path, label = self.samples[i]
            try:
                x = self.augment(path, rng, self.max_pixels)
            except BadImageError as e:
                self.known_bad.add(i)
                failed.append((path, str(e)))
                if self.strict or len(failed) >= 100:
                    break
                continue
            return x, label, alpha, tuple(failed)
        s = self.augment.size  # a placeholder; the main process raises or stops on ``failed``
        return torch.zeros(3, s, s, dtype=torch.uint8), -1, (0.0, 0.0, 0.0), tuple(failed)


def _collate(batch):
    x, y, alpha, failed = zip(*batch)
    return torch.stack(x), torch.tensor(y), torch.tensor(alpha), [f for fs in failed for f in fs]


class _StepBatches(torch.utils.data.Sampler):
    """This rank's (epoch, index) lists for steps start, start+1, ... forever. The order of an epoch is the same
    permutation of (seed, epoch) that :class:`~resnet.data.batches.InMemoryBatches` uses."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int, start_step: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.steps_per_epoch = n // batch_size

    def __iter__(self):
        local = self.batch_size // self.world_size
        step, order = self.start_step, (None, None)
        while True:
            epoch, i = divmod(step, self.steps_per_epoch)
            if order[0] != epoch:
                order = (epoch, epoch_order(self.n, self.seed, epoch).tolist())
            idx = order[1][i * self.batch_size:(i + 1) * self.batch_size][self.rank * local:(self.rank + 1) * local]
            yield [(epoch, k) for k in idx]
            step += 1


class FolderBatches:
    """Augmented, normalised training batches of an image-folder dataset; the interface of
    :class:`~resnet.data.batches.InMemoryBatches`.

    Worker processes decode and crop; the batch is normalised, and lit when ``lighting`` is given, on ``device``: the
    workers hand over uint8, a quarter of the bytes of float (on this project's test machine, moving float batches
    between processes cost more than normalising them in the main process), and the device does the arithmetic in
    one fused multiply-add. ``batch_size`` is the global batch; each of ``world_size`` ranks gets its slice of it.
    The batch of a step depends only on (seed, step), so resuming at step s reproduces the same data order and crops.
    """

    def __init__(self, dataset: ImageFolderDataset, normalization: Normalization, batch_size: int, seed: int = 0,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1, workers: int = 4,
                 augment: TrainAugment | None = None, lighting: Lighting | None = None, channels_last: bool = False,
                 prefetch_factor: int = 4, pin_memory: bool | None = None):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} processes")
        if len(dataset) < batch_size:
            raise UsageError(f"batch size {batch_size} is larger than the {len(dataset)} training images; "
                             "pass a smaller --batch-size")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.device = torch.device(device)
        self.norm = normalization.to(self.device)
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.augment = augment or TrainAugment()
        self.lighting = lighting
        self.channels_last, self.prefetch_factor = channels_last, prefetch_factor
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self._coefficients: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # Drop the last incomplete batch of each epoch, so that every step has the recipe's batch size.
        self.steps_per_epoch = len(dataset) // batch_size
        self._at_scan = len(dataset.skipped)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Files skipped so far, at scan time and while decoding."""
        return self.dataset.skipped

    def loader(self, start_step: int = 0) -> torch.utils.data.DataLoader:
        """The uint8 batches (x (B, 3, H, W), y, lighting draws, failed files) of this rank from ``start_step``."""
        sampler = _StepBatches(len(self.dataset), self.batch_size, self.seed, self.rank, self.world_size, start_step)
        extra = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False} if self.workers else {}
        return torch.utils.data.DataLoader(_TrainSamples(self.dataset, self.augment, self.seed),
                                           batch_sampler=sampler, num_workers=self.workers, collate_fn=_collate,
                                           pin_memory=self.pin_memory, **extra)

    def prepare(self, x: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """A uint8 loader batch (B, 3, H, W) -> normalised float on the device, lit if lighting is on."""
        x = x.to(self.device, non_blocking=True)
        size = tuple(x.shape[-2:])
        if size not in self._coefficients:
            self._coefficients[size] = affine(self.norm, size, self.device)
        return normalize_batch(x, self.norm, self.lighting, alphas, self.channels_last, self._coefficients[size])

    def iterate(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised batches (x, y) on the device for steps start_step, start_step + 1, ... forever."""
        step, reported = start_step, len(self.dataset.skipped)
        for x, y, alphas, failed in self.loader(start_step):
            for path, reason in failed:
                self.dataset.bad_file(path, reason)
            if (y < 0).any():
                raise DataError(f"{self.dataset.root / self.dataset.split}: over 100 unreadable files in a row; "
                                 "check the data folder")
            step += 1
            if step % self.steps_per_epoch == 0 and len(self.dataset.skipped) > reported:
                log.warning(f"warning: epoch {step // self.steps_per_epoch - 1}: {len(self.dataset.skipped)} "
                            f"unusable files skipped so far ({len(self.dataset.skipped) - self._at_scan} found "
                            "while decoding, their samples replaced by the next readable ones)")
                reported = len(self.dataset.skipped)
            yield self.prepare(x, alphas), y.to(self.device, non_blocking=True)
