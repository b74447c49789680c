"""The data sources the package knows, in one registry: what ``--data NAME`` means everywhere.

Two kinds, as the paper has two settings:

- ``memory``: CIFAR-style 32x32 images held in memory as uint8 tensors (Sec. 4.2): per-pixel mean subtraction,
  4-pixel padding, crops and mirrors, a fixed 45k/5k train/val split; read by ``data.cifar`` (and ``data.embedded``).
- ``folder``: image folders ``DIR/<split>/<class>/*`` decoded per batch (Sec. 3.4): scale augmentation, 224 crops,
  PCA lighting; read by ``data.imagefolder``.

Each kind has its test protocols (``PROTOCOLS``, the ``--tta`` vocabulary): the single image or centre crop (the paper's
monitoring test) and the views averaged beyond it. The trainer (``training/data.py``), ``resnet eval``, the experiments
and the command-line choices all ask this module; no other module decides what a dataset name means. Each source
opens its own data (``DataSource.open``) and knows its number of classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

from ..errors import UsageError, choices

# The test protocols of each kind, with what each averages over. The paper's tests are "center" (CIFAR, Sec. 4.2; the
# centre 224 crop for monitoring ImageNet runs), "10crop" and "multiscale" (Sec. 3.4, Table 4).
PROTOCOLS = {
    "memory": {
        "center": "the single image (the paper's)",
        "flip": "the image and its mirror (2 views)",
        "shift": "the image and its four 1-pixel diagonal shifts, each with its mirror (10 views)",
    },
    "folder": {
        "center": "the central 224 crop of the image resized to 256 (monitoring; torchvision's and timm's test)",
        "10crop": "the four corner and the central 224 crops and their mirrors (Sec. 3.4, Tables 2-3)",
        "multiscale": "the whole image at shorter sides 224-640 and its mirror, fully convolutional (Table 4)",
        "multicrop": "the 10 crops at each of those five scales (50 views)",
    },
}
CIFAR_PROTOCOLS = PROTOCOLS["memory"]
FOLDER_PROTOCOLS = PROTOCOLS["folder"]


SPLITS = ("train", "val", "trainval", "test")  # of the in-memory sources; a folder's splits are its sub-folders


@dataclass(frozen=True)
class DataSource:
    """One ``--data NAME``: what it is, its kind's test protocols, and how to open a split of it (``open``, which each
    kind of source implements: the readers live in ``cifar.py``, ``embedded.py`` and ``imagefolder.py``)."""

    name: str
    about: str  # one line for --help
    num_classes: int | None = None  # None: as many as the folder holds
    cifar10_images: bool = False  # images and classes of CIFAR-10: the paper's CIFAR experiments run on it
    splits_described: tuple[str, str] | None = None  # how a report names (the training, the held-out) split
    kind: ClassVar[str]  # "memory" or "folder": the key of PROTOCOLS, of the evaluators and of the training batches

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(PROTOCOLS[self.kind])

    def check_protocol(self, tta: str) -> None:
        if tta not in PROTOCOLS[self.kind]:
            raise UsageError(f"--tta {tta} is not a test protocol of --data {self.name}; it has "
                             f"{choices(self.protocols)}")

    def open(self, split: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0, download: bool = True,
             classes: list[str] | None = None, own_classes: bool = False):
        """One split: an in-memory ``cifar.ImageSet`` or a scanned ``imagefolder.ImageFolderDataset``. ``seed``
        only seeds synthetic images; ``download``: fetch official files that are missing. Folders: ``classes`` fixes
        the label order (by default the training split's class folders); ``own_classes`` takes the split's own
        folders instead (to evaluate a subset of classes)."""
        raise NotImplementedError

    def where(self, split: str, data_dir: str | os.PathLike | None = None) -> str:
        """The split, named for a message."""
        return f"{self.name} {split}"

    def describe_files(self, data_dir: str | os.PathLike | None) -> str | None:
        """What the images in ``data_dir`` are (a report names its data by it), where the source can say."""
        return None

    def describe_split(self, measured: str = "val") -> str:
        """What a report measured on: the held-out split ("val") or the training split ("train")."""
        if self.splits_described:
            return self.splits_described[measured != "train"]
        return f"the {'training' if measured == 'train' else 'validation'} split of the {self.name!r} data"


# The readers (torch, numpy, PIL) are imported inside ``open``, not above: the command line reads this registry to
# build its choices, and `resnet --help` stays fast.


@dataclass(frozen=True)
class MemorySource(DataSource):
    """CIFAR-style 32x32 images held in memory as uint8 tensors, split as the paper splits CIFAR-10 (Sec. 4.2)."""

    kind: ClassVar[str] = "memory"

    def open(self, split, data_dir=None, *, seed=0, download=True, classes=None, own_classes=False):
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; choose from {choices(SPLITS)}")
        return self.read(split, data_dir, seed=seed, download=download)

    def read(self, split: str, data_dir, *, seed: int, download: bool):
        raise NotImplementedError


@dataclass(frozen=True)
class CifarFiles(MemorySource):
    """CIFAR-10 or CIFAR-100 in any form a user has (the official files, an image tree, an archive of one)."""

    def read(self, split, data_dir, *, seed, download):
        from . import cifar  # see above: the readers are imported when a split is opened

        return cifar.load_cifar(self.name, self.num_classes, data_dir, split, download=download)

    def describe_files(self, data_dir) -> str | None:
        from .describe import describe_cifar_files  # see above: PIL is imported when the files are looked at

        return describe_cifar_files(self.name, data_dir)


@dataclass(frozen=True)
class EmbeddedCifar(MemorySource):
    """The CIFAR-10 subset shipped inside the package."""

    def read(self, split, data_dir, *, seed, download):
        from . import embedded  # see above: the readers are imported when a split is opened

        return embedded.load(split)


@dataclass(frozen=True)
class SyntheticCifar(MemorySource):
    """Random images of CIFAR-10's shapes, seeded."""

    def read(self, split, data_dir, *, seed, download):
        from . import cifar  # see above: the readers are imported when a split is opened

        return cifar.synthetic(split, seed)


@dataclass(frozen=True)
class ImageFolders(DataSource):
    """Image folders ``DIR/<split>/<class>/*``, decoded per batch."""

    flavour: str = "auto"  # "imagenet" checks for the 1000 synset folders
    kind: ClassVar[str] = "folder"

    def open(self, split, data_dir=None, *, seed=0, download=True, classes=None, own_classes=False):
        from . import imagefolder  # see above: the readers are imported when a split is opened

        if not data_dir:
            raise UsageError(f"--data {self.name} needs --data-dir DIR, with DIR/{split}/<class>/<images>")
        if own_classes:  # any subset of the classes: the ImageNet layout (all 1000 synsets) is not required
            return imagefolder.open_image_folder(data_dir, split, classes=imagefolder.class_folders(Path(data_dir) / split))
        return imagefolder.open_image_folder(data_dir, split, self.flavour, classes=classes)

    def where(self, split: str, data_dir: str | os.PathLike | None = None) -> str:
        return str(Path(data_dir or ".") / split)


SOURCES = {s.name: s for s in (
    CifarFiles("cifar10", "CIFAR-10: python batches, an image tree or archive (downloaded when missing)", 10,
               cifar10_images=True, splits_described=(
                   "the 45k training split (the 5k validation images are held out, Sec. 4.2)",
                   "the held-out validation split (45k train / 5k val of CIFAR-10's training images, Sec. 4.2)")),
    CifarFiles("cifar100", "CIFAR-100, as CIFAR-10", 100),
    EmbeddedCifar("embedded", "the 6,000 CIFAR-10 images inside the package (5,000 train, 1,000 val)", 10,
                  cifar10_images=True),
    SyntheticCifar("synthetic", "random 32x32 images in 10 classes, for smoke tests", 10, cifar10_images=True),
    ImageFolders("imagefolder", "DIR/train/<class>/* and DIR/val/<class>/* image files"),
    ImageFolders("imagenet", "ImageNet as DIR/train/<synset>/*, DIR/val/<synset>/*", 1000, flavour="imagenet"),
)}
NAMES = tuple(SOURCES)


def data_source(name: str) -> DataSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {choices(NAMES)}") from None


def names(kind: str | None = None, *, cifar10_images: bool | None = None) -> tuple[str, ...]:
    """The source names, optionally of one kind or only those holding CIFAR-10's images and classes."""
    return tuple(s.name for s in SOURCES.values() if (kind is None or s.kind == kind)
                 and (cifar10_images is None or s.cifar10_images == cifar10_images))


def default_source(family: str) -> DataSource:
    """The data weights of a model family are evaluated on when neither they nor the user say."""
    return SOURCES["cifar10" if family == "cifar" else "imagefolder"]


def all_protocols() -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for kind in PROTOCOLS.values() for p in kind))
