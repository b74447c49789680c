"""Top-1 and top-5 error of a classifier over a set of uint8 images, in batches, without gradients; shared between
the processes of a ``torchrun`` job, each evaluating its slice, with the same result as one process."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..data.batches import pad_crop_flip
from ..data.normalize import Normalization
from ..data.sources import CIFAR_PROTOCOLS

# CIFAR test protocols (their names and meanings: ``data.sources.CIFAR_PROTOCOLS``). The paper tests the single image
# (Sec. 4.2); the others average the softmax over views cut the way training augments (zero padding, crop, mirror), so
# that every view is an image the net has seen the like of. The shift is
# 1 pixel: on two fast-recipe runs that are not the ones reported (docs/speed.md), shifts of 1 / 2 / 3 pixels gave
# 14.32 / 14.26 / 14.28% and 14.40 / 14.74 / 14.62% validation error (flip alone 14.78% and 15.12%).
_SHIFT = 1
# Crop offsets into the image zero-padded by _SHIFT: the centre first, then the four diagonal shifts.
_OFFSETS = ((_SHIFT, _SHIFT), (0, 0), (0, 2 * _SHIFT), (2 * _SHIFT, 0), (2 * _SHIFT, 2 * _SHIFT))
_VIEWS = {"center": 1, "flip": 2, "shift": 2 * len(_OFFSETS)}


def cifar_views(x: torch.Tensor, tta: str) -> torch.Tensor:
    """The views of a uint8 batch (N, 3, H, W) under a CIFAR protocol, stacked view by view: (V * N, 3, H, W)."""
    if tta == "center":
        return x
    offsets = _OFFSETS if tta == "shift" else _OFFSETS[:1]
    n = len(x)
    return torch.cat([pad_crop_flip(x, torch.tensor(o, device=x.device).expand(n, 2),
                                    torch.full((n,), mirror, device=x.device), pad=_SHIFT)
                      for o in offsets for mirror in (False, True)])


def topk_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Number of top-1 and top-5 mistakes in a batch (top-5 is top-k for fewer than 5 classes)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return int((~hit[:, 0]).sum()), int((~hit.any(1)).sum())


def shard(n: int, rank: int = 0, world_size: int = 1) -> slice:
    """Rank ``rank``'s share of ``n`` batches: contiguous, disjoint, in order, all of them over the ranks. Ranks
    split whole batches, so each batch is computed as one process computes it."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


def gather(items: list, world_size: int = 1) -> list:
    """Every rank's ``items`` (picklable), concatenated in rank order: the batches of the whole set in order, when each
    rank evaluated its ``shard``. Summing them as one process would makes the result that process's, to the bit."""
    if world_size <= 1:
        return items
    parts: list = [None] * world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def tally(per_batch: Iterable[tuple[float, int, int, int]]) -> dict:
    """Errors and mean loss from per-batch (summed loss, top-1 mistakes, top-5 mistakes, images), added in order."""
    n = top1 = top5 = 0
    loss = 0.0
    for batch_loss, e1, e5, k in per_batch:
        loss += batch_loss
        top1, top5, n = top1 + e1, top5 + e5, n + k
    if n == 0:
        raise ValueError("no images to evaluate")
    return {"top1_error": 100.0 * top1 / n, "top5_error": 100.0 * top5 / n, "loss": loss / n, "images": n}


@torch.no_grad()
def evaluate_batches(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     world_size: int = 1) -> dict:
    """``predict`` maps a batch of inputs to class scores; ``batches`` yields (inputs, labels): all of them, or under
    ``torchrun`` (``world_size`` > 1) this rank's ``shard`` of them; every rank returns the result over all."""
    per_batch = []
    for x, y in batches:
        scores = predict(x).float()
        y = y.to(scores.device)
        loss = float(torch.nn.functional.cross_entropy(scores, y, reduction="sum"))
        per_batch.append((loss, *topk_errors(scores, y), len(y)))
    return tally(gather(per_batch, world_size))


def evaluate_images(model: torch.nn.Module, normalization: Normalization, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 250, device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                    progress: bool = False, tta: str = "center", rank: int = 0, world_size: int = 1) -> dict:
    """Evaluation of uint8 images (N, 3, H, W) with the model in eval mode (BN running statistics) under a CIFAR test
    protocol (``CIFAR_PROTOCOLS``): the single image (the paper's), or the softmax averaged over its views (beyond the
    paper). With views, the logits handed on are log-probabilities, so the reported loss is that of the averaged
    softmax. ``batch_size`` counts the images of one forward pass, views included (the default 250: timings in
    docs/speed.md).
    Under ``torchrun``, each of ``world_size`` ranks passes its ``rank`` and evaluates its ``shard`` of the batches;
    all get the result over every image, equal to one process's."""
    if tta not in CIFAR_PROTOCOLS:
        raise ValueError(f"unknown CIFAR test protocol {tta!r}; choose one of {', '.join(CIFAR_PROTOCOLS)}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    norm = normalization.to(device)

    def predict(x):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            x = x.to(device, non_blocking=True)
            if tta == "center":
                return model(norm(x))
            views = cifar_views(x, tta)
            scores = model(norm(views)).float().log_softmax(1).view(len(views) // len(x), len(x), -1)
            return scores.logsumexp(0) - math.log(scores.shape[0])

    step = max(1, batch_size // _VIEWS[tta])  # images per forward pass
    starts = range(0, len(images), step)
    starts = starts[shard(len(starts), rank, world_size)]
    if progress:
        starts = tqdm(starts, desc="eval", unit="batch", dynamic_ncols=True)
    try:
        return evaluate_batches(predict, ((images[i:i + step], labels[i:i + step]) for i in starts), world_size)
    finally:
        model.train(was_training)
