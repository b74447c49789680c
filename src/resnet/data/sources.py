"""The data sources the package knows, in one registry: what ``--data NAME`` means everywhere.

Two kinds, as the paper has two settings:

- ``memory``: CIFAR-style 32x32 images held in memory as uint8 tensors (Sec. 4.2): per-pixel mean subtraction,
  4-pixel padding, crops and mirrors, a fixed 45k/5k train/val split; read by ``data.cifar``.
- ``folder``: image folders ``DIR/<split>/<class>/*`` decoded per batch (Sec. 3.4): scale augmentation, 224 crops,
  PCA lighting; read by ``data.imagefolder``.

Each kind has its test protocols (``PROTOCOLS``, the ``--tta`` vocabulary): the single image or centre crop (the paper's
monitoring test) and the views averaged beyond it. The trainer (``training/data.py``), ``resnet eval``, the experiments
and the command-line choices all ask this module; no other module decides what a dataset name means.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DataSource:
    name: str
    kind: str  # "memory" or "folder"
    about: str  # one line for --help
    num_classes: int | None = None  # None: as many as the folder holds
    cifar10_images: bool = False  # images and classes of CIFAR-10: the paper's CIFAR experiments run on it
    flavour: str = "auto"  # folders: "imagenet" checks for the 1000 synset folders

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(PROTOCOLS[self.kind])

    def check_protocol(self, tta: str) -> None:
        if tta not in PROTOCOLS[self.kind]:
            raise UsageError(f"--tta {tta} is not a test protocol of --data {self.name}; it has "
                             f"{choices(self.protocols)}")

    def open(self, split: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
             classes: list[str] | None = None, own_classes: bool = False):
        """One split: an in-memory ``cifar.ImageSet`` or a scanned ``imagefolder.ImageFolderDataset``. ``seed``
        only seeds synthetic images. Folders: ``classes`` fixes the label order (by default the training split's
        class folders); ``own_classes`` takes the split's own folders instead (to evaluate a subset of classes)."""
        # The readers (torch, numpy, PIL) are imported here, not above: the command line reads this registry to
        # build its choices, and `resnet --help` stays fast.
        from . import cifar, imagefolder

        if self.kind == "memory":
            return cifar.load_split(self.name, data_dir, split, seed=seed)
        if not data_dir:
            raise UsageError(f"--data {self.name} needs --data-dir DIR, with DIR/{split}/<class>/<images>")
        if own_classes:  # any subset of the classes: the ImageNet layout (all 1000 synsets) is not required
            return imagefolder.open_image_folder(data_dir, split, classes=imagefolder.class_folders(Path(data_dir) / split))
        return imagefolder.open_image_folder(data_dir, split, self.flavour, classes=classes)

    def where(self, split: str, data_dir: str | os.PathLike | None = None) -> str:
        """The split, named for a message."""
        return f"{self.name} {split}" if self.kind == "memory" else str(Path(data_dir or ".") / split)

    def describe_split(self, measured: str = "val") -> str:
        """What a report measured on: the held-out split ("val") or the training split ("train")."""
        if self.name == "cifar10":
            return ("the 45k training split (the 5k validation images are held out, Sec. 4.2)" if measured == "train"
                    else "the held-out validation split (45k train / 5k val of CIFAR-10's training images, Sec. 4.2)")
        return f"the {'training' if measured == 'train' else 'validation'} split of the {self.name!r} data"


SOURCES = {s.name: s for s in (
    DataSource("cifar10", "memory", "CIFAR-10: python batches, an image tree or archive (downloaded when missing)",
               10, cifar10_images=True),
    DataSource("cifar100", "memory", "CIFAR-100, as CIFAR-10", 100),
    DataSource("embedded", "memory", "the 6,000 CIFAR-10 images inside the package (5,000 train, 1,000 val)", 10,
               cifar10_images=True),
    DataSource("synthetic", "memory", "random 32x32 images in 10 classes, for smoke tests", 10, cifar10_images=True),
    DataSource("imagefolder", "folder", "DIR/train/<class>/* and DIR/val/<class>/* image files"),
    DataSource("imagenet", "folder", "ImageNet as DIR/train/<synset>/*, DIR/val/<synset>/*", 1000,
               flavour="imagenet"),
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
