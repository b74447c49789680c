"""A small real CIFAR-10 subset shipped inside the package, so that training, evaluation and the tests run with no
download: 500 training and 100 validation images per class (5,000 + 1,000), the original JPEG bytes of the shared
re-encoding of CIFAR-10's training set, as a tar of ``train/<class>/NNNN.jpg`` and ``val/<class>/NNNN.jpg``.

The images were drawn (``tools/make_embedded.py``, seeded) so that embedded "train" lies inside the full set's 45k
"train" split and embedded "val" inside its 5k "val" split (``cifar.held_out_mask`` on that tarball): a model trained
on either training part is never validated on its own training images. NNNN is the file's number in the full tree.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import DataError
from .cifar import ImageSet, cached, read_image_archive, select_split

ASSET = "cifar10-embedded.tar.gz"
PER_CLASS = {"train": 500, "val": 100}


def asset_path() -> Path:
    """The shipped archive. Package data is a plain file in every normal install (wheel, editable, source tree)."""
    path = Path(str(resources.files("resnet") / "assets" / ASSET))
    if not path.is_file():
        raise DataError(f"the embedded dataset {path} is missing from this installation: reinstall the package, or "
                         "regenerate it with tools/make_embedded.py")
    return path


def load(split: str) -> ImageSet:
    """The split "train" (5,000 images), "val" (1,000) or "trainval" (both), read as any CIFAR-style image archive
    is read (decoded once, then cached); there is no "test"."""
    path = asset_path()
    return select_split(cached(path, lambda: read_image_archive(path)), split, "the embedded dataset")
