"""What a training run trains and is evaluated on, in the trainer's terms, for every kind of data: the class names,
the input normalisation, ``make_batches(batch_size, channels_last)`` (the batches of each step), an evaluator of the
held-out split, the test protocols that evaluator has, and a summary for ``config.json``.

- CIFAR-style data held in memory (Sec. 4.2): the per-pixel mean of the training images is subtracted; a fixed
  45k/5k train/val split (``protocol="val"``) or 50k/10k (``protocol="test"``).
- Image folders (Sec. 3.4): scale augmentation, per-pixel mean subtraction and PCA lighting, both from the
  statistics of (up to) 5000 training images, computed once and cached; evaluation on ``DIR/val`` (``DIR/test`` for
  ``protocol="test"``) with the single centre crop, the cheap protocol for monitoring a run (10-crop and multi-scale
  are for ``resnet eval --tta``).

Under ``torchrun`` each rank draws its slice of every global batch and evaluates its share of the held-out images;
all get the result over the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..data.batches import InMemoryBatches
from ..data.imagefolder import FolderBatches
from ..data.normalize import Normalization
from ..data.sources import DataSource, data_source
from ..data.transforms import TrainAugment, train_statistics
from ..errors import UsageError
from ..evaluation.evaluator import evaluator


@dataclass(frozen=True)
class TrainingData:
    classes: list[str]
    norm: Normalization
    make_batches: Callable  # (batch_size, channels_last) -> batches with ``iterate(start_step)`` and ``steps_per_epoch``
    evaluate: Callable  # (net, tta="center") -> {"top1_error", "top5_error", "loss", "images", ...}
    info: dict  # train_images, eval_images, eval_split, ...
    test_protocols: tuple[str, ...]  # what ``evaluate`` accepts as ``tta``


def load_training_data(cfg, rt, dist) -> TrainingData:
    """The data of the run ``cfg`` (a ``TrainConfig``) on the runtime ``rt`` and the process group ``dist``."""
    if cfg.protocol not in ("val", "test"):
        raise UsageError(f"unknown protocol {cfg.protocol!r}; choose val (45k/5k) or test (50k/10k)")
    source = data_source(cfg.data)
    return {"memory": in_memory_data, "folder": folder_data}[source.kind](source, cfg, rt, dist)


def in_memory_data(source: DataSource, cfg, rt, dist) -> TrainingData:
    train_split, eval_split = ("train", "val") if cfg.protocol == "val" else ("trainval", "test")
    train = source.open(train_split, cfg.data_dir)
    held_out = source.open(eval_split, cfg.data_dir)
    # Sec. 4.2: the per-pixel mean of the training images is subtracted.
    norm = Normalization.mean_image(train.images)

    def make_batches(batch_size: int, channels_last: bool):
        return InMemoryBatches(train.images, train.labels, norm, batch_size, seed=cfg.seed, device=rt.device,
                               rank=dist.rank, world_size=dist.world_size, channels_last=channels_last)

    evaluate = evaluator(source, held_out, norm, eval_split, device=rt.device, autocast_dtype=rt.autocast_dtype,
                         rank=dist.rank, world_size=dist.world_size)
    return TrainingData(train.classes, norm, make_batches, evaluate,
                        {"train_images": len(train.images), "eval_images": len(held_out.images),
                         "eval_split": eval_split}, source.protocols)


def folder_data(source: DataSource, cfg, rt, dist) -> TrainingData:
    eval_split = "val" if cfg.protocol == "val" else "test"
    train = source.open("train", cfg.data_dir)
    held_out = source.open(eval_split, cfg.data_dir, classes=train.classes)
    samples = min(5000, len(train))
    if dist.is_main:  # the others wait and then read the cache, rather than all computing the same numbers
        stats = train_statistics(train, samples, workers=cfg.workers, progress=cfg.progress)
    if dist.enabled:
        torch.distributed.barrier()
    if not dist.is_main:
        stats = train_statistics(train, samples, workers=cfg.workers)
    norm = stats.normalization("mean_image")
    lighting = stats.lighting(0.1)

    def make_batches(batch_size: int, channels_last: bool) -> FolderBatches:
        return FolderBatches(train, norm, batch_size, seed=cfg.seed, device=rt.device, rank=dist.rank,
                             world_size=dist.world_size, workers=cfg.workers, augment=TrainAugment("scale"),
                             lighting=lighting, channels_last=channels_last)

    # The single centre crop, the cheap protocol for monitoring a run; 10-crop and multi-scale with resnet eval --tta.
    evaluate = evaluator(source, held_out, norm, eval_split, device=rt.device, autocast_dtype=rt.autocast_dtype,
                         channels_last=rt.channels_last, batch_size=128, workers=cfg.workers, rank=dist.rank,
                         world_size=dist.world_size)
    info = {"train_images": len(train), "eval_images": len(held_out), "eval_split": eval_split,
            "flavour": train.flavour, "skipped_files": len(train.skipped) + len(held_out.skipped),
            "statistics_images": stats.images}
    return TrainingData(train.class_names, norm, make_batches, evaluate, info, source.protocols)
