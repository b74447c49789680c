"""Labels in the weights' own class order, whatever classes the data holds.

An image folder's labels are its class folders in sorted order, so ``DIR/val`` holding 10 of ImageNet's 1000 synsets
would number them 0..9, and a folder of holiday photos would number its own classes like CIFAR-10's. Scored against a
net's outputs, either gives a confident, wrong error. Here each class of the data is looked up by name in the class
list the weights carry (their metadata ``classes``): a subset of the weights' classes is fine; a class the weights do
not know is refused, unless the caller allows a mismatch (then the data's classes are taken, in order, as the
weights' classes 0..k-1: the old positional behaviour, said in a warning).

ImageNet classes go by two names: the synset id that names the folder (``n01496331``) and the human-readable name
torchvision's weights (and ours, trained on ``--data imagenet``) carry (``electric ray``); either finds the class.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..data.cifar import ImageSet
from ..data.imagefolder import IMAGENET_CLASSES, WNID, imagenet_class_names, imagenet_wnids
from ..errors import UsageError

log = logging.getLogger("resnet.data")


def class_index(classes: list[str]) -> dict[str, int]:
    """Every name a class of the weights goes by -> its output index: its own name and, for ImageNet classes, the
    other of (synset id, human-readable name). A name two classes share finds neither."""
    names: dict[str, set[int]] = {}
    for i, c in enumerate(classes):
        names.setdefault(c, set()).add(i)
    aliases: list[tuple[str, int]] = []
    if len(classes) == IMAGENET_CLASSES and classes == imagenet_class_names():  # all 1000, by name
        aliases = [(w, i) for i, w in enumerate(imagenet_wnids())]
    elif any(WNID.match(c) for c in classes):  # synset ids (a subset of ImageNet, say): add their names
        name_of = dict(zip(imagenet_wnids(), imagenet_class_names()))
        aliases = [(name_of[c], i) for i, c in enumerate(classes) if c in name_of]
    for name, i in aliases:
        names.setdefault(name, set()).add(i)
    return {name: next(iter(ix)) for name, ix in names.items() if len(ix) == 1}


def match_classes(data_classes: list[str], weight_classes: list[str] | None, num_classes: int, *,
                  allow_mismatch: bool = False, where: str = "the data", weights: str = "the weights") -> list[int]:
    """For each class of the data (in its label order), the index of that class among the weights' outputs.

    ``weight_classes``: the class names the weights carry, or None when they carry none (then nothing can be
    checked: the data's classes are taken in order, with a warning). ``where`` and ``weights`` name the two sides in
    messages.
    """
    k = len(data_classes)
    if weight_classes is not None:
        index = class_index(list(weight_classes))
        unknown = [c for c in data_classes if c not in index]
        if not unknown:
            return [index[c] for c in data_classes]
        if not allow_mismatch:
            shown = ", ".join(repr(c) for c in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            known = ", ".join(list(weight_classes)[:4]) + (", ..." if len(weight_classes) > 4 else "")
            raise UsageError(
                f"{where} has {len(unknown)} of {k} classes that {weights} do not know ({shown}); their "
                f"{len(weight_classes)} classes are {known}: evaluate on folders named after those (a subset is "
                f"fine), or pass --allow-class-mismatch to take the data's classes in sorted order as classes "
                f"0..{k - 1}")
        reason = f"{len(unknown)} of its {k} classes are not among those of {weights}"
    else:
        reason = f"{weights} name no classes"
    if k > num_classes:
        raise UsageError(f"{where} has {k} classes but {weights} have {num_classes} outputs")
    log.warning(f"warning: {reason}: {where}'s classes are taken in sorted order as classes 0..{k - 1}")
    return list(range(k))


def relabel(data, labels: list[int]):
    """A split (an in-memory ``ImageSet`` or an ``ImageFolderDataset``) whose labels are ``labels[data's label]``
    (``match_classes``'s answer): the same images, scored against the weights' outputs."""
    if labels == list(range(len(labels))):
        return data
    if isinstance(data, ImageSet):
        return replace(data, labels=torch.tensor(labels, dtype=data.labels.dtype)[data.labels])
    return replace(data, samples=[(path, labels[y]) for path, y in data.samples])
