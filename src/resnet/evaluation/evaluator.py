"""One evaluator for a split of any data source: ``evaluate(net, tta="center")`` -> top-1/top-5 error and loss.

The trainer (its held-out split after every ``eval_every`` iterations) and ``resnet eval`` both build theirs here, so a
run's logged error and ``resnet eval --weights RUN`` measure the same thing the same way. The test protocols are the
source's (``data.sources.PROTOCOLS``); another is refused in one line.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..data.normalize import Normalization
from ..data.sources import DataSource
from .evaluate import evaluate_images
from .tta import evaluate_folder

BATCH_SIZE = {"memory": 250, "folder": 256}  # images (views included) per forward pass: timings in docs/speed.md


def evaluator(source: DataSource, data, normalization: Normalization, split: str, *, device: torch.device,
              autocast_dtype: torch.dtype | None = None, channels_last: bool = False, batch_size: int | None = None,
              workers: int = 0, progress: bool = False, rank: int = 0, world_size: int = 1) -> Callable[..., dict]:
    """``data``: the split as ``source.open`` gives it (labels already in the net's class order). Under ``torchrun``
    each of ``world_size`` ranks evaluates its share and all get the result over the whole split."""
    batch_size = batch_size or BATCH_SIZE[source.kind]

    def evaluate(net: torch.nn.Module, tta: str = "center") -> dict:
        source.check_protocol(tta)
        if source.kind == "memory":
            return evaluate_images(net, normalization, data.images, data.labels, batch_size=batch_size, device=device,
                                   autocast_dtype=autocast_dtype, progress=progress, tta=tta, rank=rank,
                                   world_size=world_size)
        return evaluate_folder(net, normalization, data, split, tta, batch_size=batch_size, device=device,
                               workers=workers, autocast_dtype=autocast_dtype, channels_last=channels_last,
                               progress=progress, rank=rank, world_size=world_size)

    return evaluate
