"""Top-1 and top-5 error of a classifier over a set of uint8 images, in batches, without gradients."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from ..data.normalize import Normalization


def topk_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Number of top-1 and top-5 mistakes in a batch (top-5 is top-k for fewer than 5 classes)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return int((~hit[:, 0]).sum()), int((~hit.any(1)).sum())


@torch.no_grad()
def evaluate_batches(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """``predict`` maps a batch of inputs to class scores; ``batches`` yields (inputs, labels)."""
    n = top1 = top5 = 0
    loss = 0.0
    for x, y in batches:
        scores = predict(x).float()
        y = y.to(scores.device)
        loss += float(torch.nn.functional.cross_entropy(scores, y, reduction="sum"))
        e1, e5 = topk_errors(scores, y)
        top1, top5, n = top1 + e1, top5 + e5, n + len(y)
    if n == 0:
        raise ValueError("no images to evaluate")
    return {"top1_error": 100.0 * top1 / n, "top5_error": 100.0 * top5 / n, "loss": loss / n, "images": n}


def evaluate_images(model: torch.nn.Module, normalization: Normalization, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 500, device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                    progress: bool = False, flip: bool = False) -> dict:
    """Evaluation of uint8 images (N, 3, H, W) with the model in eval mode (BN running statistics): the single image,
    or with ``flip`` the softmax of the image and of its mirror averaged (beyond the paper; its CIFAR test is the single
    image). The logits handed on are then log-probabilities, so the reported loss is that of the averaged softmax."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    norm = normalization.to(device)

    def predict(x):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            x = norm(x.to(device, non_blocking=True))
            if not flip:
                return model(x)
            both = model(torch.cat([x, x.flip(3)])).float().log_softmax(1)
            return (both.view(2, len(x), -1).logsumexp(0) - math.log(2))

    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="eval", unit="batch", dynamic_ncols=True)
    try:
        return evaluate_batches(predict, ((images[i:i + batch_size], labels[i:i + batch_size]) for i in starts))
    finally:
        model.train(was_training)
