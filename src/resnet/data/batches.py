"""Training batches for in-memory datasets (CIFAR): the whole set resident on the training device, augmented in
batches on whole tensors (Sec. 4.2: pad 4, random 32x32 crop, random horizontal flip), never image by image.

The batch of a global step is a pure function of (seed, step): the epoch's order is a permutation seeded by (seed,
epoch) and the augmentation of a step is drawn from a generator seeded by (seed, step). Resuming at step s therefore
needs nothing but s, and every rank of a distributed run draws the same global batch and keeps its own slice of it.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .normalize import Normalization


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    seed = 0
    for k in keys:  # a simple, stable mix of the keys into one 63-bit seed
        seed = (seed * 1_000_003 + int(k) + 1) % (2**63 - 1)
    g.manual_seed(seed)
    return g


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``n`` training images in ``epoch``: a permutation that depends only on (seed, epoch), so that
    resuming at any step draws the same batches, and every loader (in memory, image folders) draws alike."""
    return torch.randperm(n, generator=_generator(seed, epoch))


def pad_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Zero-pad each image by ``pad``, crop back to the original size at per-image ``offsets`` (N, 2) in [0, 2*pad],
    and flip horizontally where ``flips`` (N,) is true. Works on any device and dtype, in a handful of tensor ops."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))  # (N, H)
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


class InMemoryBatches:
    """Augmented, normalised training batches of an in-memory uint8 image set.

    ``batch_size`` is the global batch; with ``world_size > 1`` each rank receives its contiguous slice of it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalization: Normalization, batch_size: int,
                 seed: int = 0, device: str | torch.device = "cpu", augment: bool = True, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} processes")
        if len(images) < batch_size:
            raise UsageError(f"batch size {batch_size} is larger than the {len(images)} training images; "
                             "pass a smaller --batch-size")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.norm = normalization.to(self.device)
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        # Drop the last incomplete batch of each epoch, so that every step has the recipe's batch size.
        self.steps_per_epoch = len(images) // batch_size
        self._order: tuple[int, torch.Tensor] | None = None

    def order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            perm = epoch_order(len(self.images), self.seed, epoch)
            self._order = (epoch, perm.to(self.device))
        return self._order[1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        local = self.batch_size // self.world_size
        mine = slice(self.rank * local, (self.rank + 1) * local)
        x = self.images[idx[mine]]
        if self.augment:
            g = _generator(self.seed, 1_000_000 + step)
            offsets = self._to_device(torch.randint(0, 9, (self.batch_size, 2), generator=g)[mine])
            flips = self._to_device((torch.rand(self.batch_size, generator=g) < 0.5)[mine])
            x = pad_crop_flip(x, offsets, flips)
        # The layout the runtime asked for: the crops come out of pad_crop_flip channels-last-strided, and a
        # convolution follows its input's layout, so an NCHW runtime would otherwise run channels_last unawares.
        x = self.norm(x).contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return x, self.labels[idx[mine]]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A small host tensor (drawn on the CPU, so that every device draws the same batches) onto the device. On
        CUDA through pinned memory without waiting: a copy from pageable memory waits for the work queued before it,
        and the host could never run ahead of the GPU."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def iterate(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1
