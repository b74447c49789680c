"""The ImageNet training augmentation of the paper (Sec. 3.4) and the training-set statistics it needs.

- Scale augmentation: the shorter side resized to a random S in [256, 480], a random 224x224 crop, a random
  horizontal flip (Sec. 3.4, after Simonyan & Zisserman). ``random_resized_crop`` (Inception-style: 8%-100% of the
  area, aspect 3/4-4/3, then 224x224) is the modern alternative, named as such.
- Per-pixel mean subtraction (Sec. 3.4) with the mean image of the training set, or per-channel mean/std.
- AlexNet "PCA" lighting noise along the principal components of the training set's RGB pixels, std 0.1 (Sec. 3.4).

Geometry runs in the loader's worker processes and hands out uint8 crops; normalisation and lighting run on whole
batches on the training device. The randomness of a sample is a pure function of (seed, epoch, index).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..errors import DataError, UsageError, choices
from ..files import atomic_path, cache_root
from .decode import MAX_PIXELS, BadImageError, load_crop
from .normalize import Normalization

log = logging.getLogger("resnet.data")

AUGMENTATIONS = ("scale", "random_resized_crop")


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random stream of one sample in one epoch, the same in whichever worker process draws it. (A string seed
    is hashed with SHA-512, independently of PYTHONHASHSEED; it costs a quarter of seeding a numpy Generator.)"""
    return random.Random(f"{seed}/{epoch}/{index}")


@dataclass(frozen=True)
class TrainAugment:
    """Where to crop, whether to flip. ``policy``: "scale" (the paper) or "random_resized_crop"."""

    policy: str = "scale"
    size: int = 224
    scale_range: tuple[int, int] = (256, 480)  # Sec. 3.4: shorter side in [256, 480]
    area: tuple[float, float] = (0.08, 1.0)  # random_resized_crop only
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random_resized_crop only
    flip: bool = True

    def __post_init__(self):
        if self.policy not in AUGMENTATIONS:
            raise UsageError(f"unknown augmentation {self.policy!r}; choose one of: {choices(AUGMENTATIONS)}")
        lo, hi = self.scale_range
        if not self.size <= lo <= hi:
            raise UsageError(f"scale range [{lo}, {hi}] must start at or above the crop size {self.size}")

    def box(self, width: int, height: int, rng: random.Random) -> tuple[float, float, float, float]:
        """The crop, in the file's pixel coordinates."""
        if self.policy == "scale":
            s = rng.randint(self.scale_range[0], self.scale_range[1])
            f = s / min(width, height)  # the image is resized by f, then cropped
            rw, rh = max(self.size, round(width * f)), max(self.size, round(height * f))
            x, y = rng.randint(0, rw - self.size), rng.randint(0, rh - self.size)
            return x / f, y / f, (x + self.size) / f, (y + self.size) / f
        return random_resized_box(width, height, self.area, self.ratio, rng)

    def __call__(self, path: str, rng: random.Random, max_pixels: int) -> torch.Tensor:
        """The augmented crop of one file as uint8 (3, size, size)."""
        flip = self.flip and rng.random() < 0.5
        return load_crop(path, lambda w, h: self.box(w, h, rng), (self.size, self.size), flip, max_pixels)


def random_resized_box(width: int, height: int, area: tuple[float, float], ratio: tuple[float, float],
                       rng: random.Random) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop.get_params, drawn from ``rng``."""
    total = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = total * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return x, y, x + w, y + h
    in_ratio = width / height  # fallback: the central crop of the allowed aspect
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    x, y = (width - w) // 2, (height - h) // 2
    return x, y, x + w, y + h


@dataclass
class Lighting:
    """AlexNet's PCA colour augmentation (Sec. 3.4, after Krizhevsky et al. 2012, Sec. 4.1): each image gets
    ``eigvec @ (alpha * eigval)`` added to every pixel, ``alpha ~ N(0, alphastd)`` per component, where ``eigval`` and
    ``eigvec`` are the eigenvalues and eigenvectors of the 3x3 covariance of training pixels in [0, 1] units. For
    ImageNet that is a shift of a few grey levels, mostly along the brightness axis."""

    eigval: torch.Tensor  # (3,), descending
    eigvec: torch.Tensor  # (3, 3), column k is component k
    alphastd: float = 0.1  # Sec. 3.4 / AlexNet

    @classmethod
    def imagenet(cls, alphastd: float = 0.1) -> "Lighting":
        """ImageNet's components as fb.resnet.torch (the authors' Torch reproduction) uses them."""
        val = torch.tensor([0.2175, 0.0188, 0.0045])
        vec = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
        return cls(val, vec, alphastd)

    def shift(self, alphas: torch.Tensor) -> torch.Tensor:
        """Standard-normal draws (N, 3) -> RGB offsets (N, 3) in [0, 1] units."""
        scaled = alphas.float() * self.alphastd * self.eigval.to(alphas.device)
        return scaled @ self.eigvec.to(alphas.device).T


def affine(normalization: Normalization, size: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``normalization`` of uint8 images of ``size`` as x * scale + bias: scale = 1/(255 std), bias = -mean/std (a mean
    image of another size is resized first, as Normalization does)."""
    std = normalization.std.to(device).view(3, 1, 1)
    mean = normalization.mean.to(device)
    if mean.shape[-1] > 1 and tuple(mean.shape[-2:]) != tuple(size):
        mean = torch.nn.functional.interpolate(mean[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return 1.0 / (255.0 * std), -mean / std


# torch runs an elementwise op on the calling thread when it has fewer elements than this (at::internal::GRAIN_SIZE)
_SERIAL_ELEMENTS = 32768


def normalize_batch(x: torch.Tensor, normalization: Normalization, lighting: Lighting | None = None,
                    alphas: torch.Tensor | None = None, channels_last: bool = False,
                    coefficients: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) on the device -> ``normalization`` (and ``lighting`` with draws ``alphas`` (N, 3)) as float
    (N, 3, H, W), in one fused multiply-add: x * 1/(255 std) + (shift - mean) / std. ``coefficients``:
    :func:`affine`'s result, when the caller keeps it.

    On the CPU the batch goes through in pieces small enough that torch runs each on the calling thread: each piece
    stays in cache (twice as fast as one whole-batch op), and no parallel region is opened, which on a machine whose
    cores the loader workers keep busy can wait for a free core every time (twenty times slower, measured)."""
    scale, bias = coefficients or affine(normalization, x.shape[-2:], x.device)
    light = None
    if lighting is not None:
        std = normalization.std.to(x.device).view(1, 3)
        light = (lighting.shift(alphas.to(x.device)) / std)[:, :, None, None]
    if x.device.type != "cpu":
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
        return torch.addcmul(bias if light is None else bias + light, x, scale, out=out)
    n, c, h, w = x.shape
    out = torch.empty(x.shape, dtype=torch.float32)
    pixels, outs = x.reshape(n, c, h * w), out.view(n, c, h * w)
    bias, scale = bias.reshape(c, -1), scale.reshape(c, 1)
    step = max(1, _SERIAL_ELEMENTS // c - 1)
    for i in range(n):
        for j in range(0, h * w, step):
            b = bias if bias.shape[1] == 1 else bias[:, j:j + step]
            if light is not None:
                b = b + light[i].view(c, 1)
            torch.addcmul(b, pixels[i, :, j:j + step], scale, out=outs[i, :, j:j + step])
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


# ----------------------------------------------------------------------------------------------------------------
# Training-set statistics: mean image, per-channel mean/std, RGB covariance. Computed once, cached.

STATS_VERSION = 1


@dataclass
class TrainStatistics:
    mean_image: torch.Tensor  # (3, size, size) in [0, 1]
    channel_mean: torch.Tensor  # (3,)
    channel_std: torch.Tensor  # (3,)
    eigval: torch.Tensor  # (3,) of the RGB covariance, descending
    eigvec: torch.Tensor  # (3, 3), columns
    images: int

    def normalization(self, kind: str = "mean_image") -> Normalization:
        """``mean_image`` (the paper, Sec. 3.4) or ``mean_std`` (per-channel)."""
        if kind == "mean_image":
            return Normalization(self.mean_image.clone(), torch.ones(3, 1, 1))
        if kind == "mean_std":
            return Normalization(self.channel_mean.view(3, 1, 1).clone(), self.channel_std.view(3, 1, 1).clone())
        raise UsageError(f"unknown normalisation {kind!r}; choose one of: mean_image, mean_std")

    def lighting(self, alphastd: float = 0.1) -> Lighting:
        return Lighting(self.eigval.clone(), self.eigvec.clone(), alphastd)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean_image": self.mean_image, "channel_mean": self.channel_mean, "channel_std": self.channel_std,
                "eigval": self.eigval, "eigvec": self.eigvec}


class _WarpedSamples(torch.utils.data.Dataset):
    """Sample i of a list, warped to size x size (the whole image, as Caffe's mean image was)."""

    def __init__(self, paths: list[str], size: int, max_pixels: int):
        self.paths, self.size, self.max_pixels = paths, size, max_pixels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return load_crop(self.paths[i], lambda w, h: (0, 0, w, h), (self.size, self.size), False,
                             self.max_pixels).permute(1, 2, 0)
        except BadImageError:
            return None


def _collate_some(batch):
    good = [b for b in batch if b is not None]
    return torch.stack(good) if good else None


def compute_statistics(paths: list[str], size: int = 224, workers: int = 0, max_pixels: int | None = None,
                       progress: bool = False) -> TrainStatistics:
    """Mean image, channel mean/std and RGB covariance eigen-decomposition of ``paths``, each warped to size x size."""
    loader = torch.utils.data.DataLoader(_WarpedSamples(paths, size, max_pixels or MAX_PIXELS), batch_size=64,
                                         num_workers=workers, collate_fn=_collate_some)
    total = torch.zeros(size, size, 3, dtype=torch.float64)
    moment1, moment2 = torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    n = 0
    if progress:
        loader = tqdm(loader, desc="train statistics", unit="batch", dynamic_ncols=True)
    for x in loader:  # (B, size, size, 3) uint8
        if x is None:
            continue
        xd = x.double()
        total += xd.sum(0)
        pixels = xd.reshape(-1, 3) / 255
        moment1 += pixels.sum(0)
        moment2 += pixels.T @ pixels
        n += len(x)
    if n == 0:
        raise DataError("no readable training images to compute the mean image from")
    count = n * size * size
    mean = moment1 / count
    cov = moment2 / count - torch.outer(mean, mean)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    order = eigval.argsort(descending=True)
    eigvec = eigvec[:, order]
    eigvec = eigvec * torch.where(eigvec.sum(0) < 0, -1.0, 1.0).double()  # a stable sign, for the cache and tests
    return TrainStatistics(
        mean_image=(total / n / 255).permute(2, 0, 1).float().contiguous(),
        channel_mean=mean.float(), channel_std=cov.diagonal().clamp(min=0).sqrt().float(),
        eigval=eigval[order].float().clamp(min=0), eigvec=eigvec.float().contiguous(), images=n)


def cache_dirs(root: str | os.PathLike) -> list[Path]:
    """Where statistics are cached: next to the data, else under the package's cache root (``files.cache_root``)."""
    root = Path(root).resolve()
    home = cache_root()
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return [root / ".resnet-cache", home / f"stats-{tag}"]


def train_statistics(dataset, samples: int = 5000, size: int = 224, seed: int = 0, workers: int = 0,
                     cache: bool = True, progress: bool = False) -> TrainStatistics:
    """Statistics of ``samples`` training images (a seeded choice) of an image-folder dataset, computed once and then
    read from the cache. The cache key covers the file list, the sample count, the size and the seed."""
    paths = [p for p, _ in dataset.samples]
    if not paths:
        raise DataError(f"{dataset.root}/{dataset.split} holds no images")
    chosen = np.random.default_rng(seed).permutation(len(paths))[:samples]
    chosen.sort()
    picked = [paths[i] for i in chosen]
    key = hashlib.sha1("\n".join([f"v{STATS_VERSION}", str(size), *(os.path.relpath(p, dataset.root) for p in picked)])
                       .encode()).hexdigest()[:16]
    name = f"stats-{dataset.split}-{len(picked)}x{size}-{key}.safetensors"
    dirs = cache_dirs(dataset.root)
    if cache:
        for d in dirs:
            if (d / name).is_file():
                try:
                    t = load_file(str(d / name))
                    images = int(t.pop("images").item())
                    return TrainStatistics(**t, images=images)
                except Exception as e:  # a damaged cache is recomputed, not fatal
                    log.warning(f"warning: ignoring unreadable statistics cache {d / name} ({e})")
    stats = compute_statistics(picked, size, workers, getattr(dataset, "max_pixels", None), progress)
    if cache:
        tensors = {k: v.contiguous() for k, v in stats.tensors().items()}
        tensors["images"] = torch.tensor(stats.images)
        for d in dirs:
            try:
                d.mkdir(parents=True, exist_ok=True)
                with atomic_path(d / name, durable=False) as tmp:
                    save_file(tensors, str(tmp), metadata={"samples": str(len(picked)), "size": str(size)})
                break
            except OSError:
                continue  # read-only data directory: fall back to the user cache
    return stats
