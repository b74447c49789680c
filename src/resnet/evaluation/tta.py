"""The paper's test protocols (Sec. 3.4, Tables 2-4) and a batched evaluator over an image-folder split.

- ``center``: shorter side resized to 256, the central 224 crop (not in the paper; what torchvision and timm report).
- ``10crop``: the four corner crops and the central crop (224) of the 256-resized image, and their horizontal flips
  (Tables 2, 3).
- ``multiscale``: fully-convolutional: the whole image with its shorter side at each of 224, 256, 384, 480, 640, and its
  flip (Table 4). The nets end in global average pooling, so any input size works; averaging the pooled features
  before the fc layer is the same as applying the fc layer convolutionally and averaging its scores.
- ``multicrop``: the 10 crops at each of those scales (beyond the paper: the two protocols combined).

Scores are softmax probabilities averaged over all views of an image. Sizes are parameters with the paper's defaults.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.decode import MAX_PIXELS, BadImageError, load_rgb, pil_to_tensor, resize, short_side_size
from ..data.imagefolder import ImageFolderDataset, open_image_folder
from ..data.normalize import Normalization
from ..data.sources import FOLDER_PROTOCOLS
from ..errors import UsageError, choices
from .evaluate import gather, shard, tally, topk_errors

PAPER_SCALES = (224, 256, 384, 480, 640)  # Table 4


@dataclass(frozen=True)
class EvalProtocol:
    name: str = "center"
    crop_size: int = 224
    resize_size: int = 256  # center and 10crop
    scales: tuple[int, ...] = PAPER_SCALES  # multiscale and multicrop
    flips: bool = True  # add the horizontal flip of each view (not for center)

    def __post_init__(self):
        if self.name not in FOLDER_PROTOCOLS:
            raise UsageError(f"unknown test protocol {self.name!r}; choose one of: {choices(FOLDER_PROTOCOLS)}")
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        if not self.scales:
            raise UsageError("give at least one test scale")
        smallest = self.resize_size if self.name in ("center", "10crop") else min(self.scales)
        if self.name != "multiscale" and smallest < self.crop_size:
            raise UsageError(f"test size {smallest} is smaller than the crop {self.crop_size}; use sizes >= the crop")

    @property
    def views_per_image(self) -> int:
        flips = 2 if self.flips else 1
        return {"center": 1, "10crop": 5 * flips, "multiscale": len(self.scales) * flips,
                "multicrop": 5 * flips * len(self.scales)}[self.name]

    @property
    def decode_size(self) -> int:
        """The shorter side the decoder must deliver (a JPEG may decode at reduced size down to this)."""
        return self.resize_size if self.name in ("center", "10crop") else max(self.scales)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """The first, per-image step (run in the loader's workers): uint8 (3, H, W) -> the image the views are cut
        from: resized to ``resize_size`` for center/10crop, unchanged for the multi-scale protocols."""
        if self.name in ("center", "10crop"):
            return _resize_short(image, self.resize_size)
        return image

    def views(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The prepared image -> its views, uint8, grouped into tensors (V, 3, h, w) of one size each."""
        if self.name == "center":
            return [_center(image, self.crop_size)[None]]
        if self.name == "10crop":
            return [self._ten(image)]
        if self.name == "multiscale":
            return [self._flips(_resize_short(image, s)[None]) for s in self.scales]
        return [torch.cat([self._ten(_resize_short(image, s)) for s in self.scales])]

    def _ten(self, image: torch.Tensor) -> torch.Tensor:
        return self._flips(five_crops(image, self.crop_size))

    def _flips(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.flip(-1)]) if self.flips else x

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d


def _resize_short(image: torch.Tensor, short: int) -> torch.Tensor:
    size = short_side_size(image.shape[-2], image.shape[-1], short)
    return resize(image[None], size)[0]


def _center(image: torch.Tensor, c: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    return image[..., top:top + c, left:left + c]


def five_crops(image: torch.Tensor, c: int) -> torch.Tensor:
    """(3, H, W) -> (5, 3, c, c): top-left, top-right, bottom-left, bottom-right, centre (torchvision's order)."""
    h, w = image.shape[-2:]
    if h < c or w < c:
        raise ValueError(f"crop {c} is larger than the image {h}x{w}")
    corners = [image[..., :c, :c], image[..., :c, w - c:], image[..., h - c:, :c], image[..., h - c:, w - c:]]
    return torch.stack(corners + [_center(image, c)])


def as_uint8_chw(image) -> torch.Tensor:
    """A PIL image (any mode) or a uint8 tensor (3, H, W) -> uint8 (3, H, W)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 (3, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
        return image
    return pil_to_tensor(image)


def read_image(path, protocol: EvalProtocol, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """One image file, decoded as every evaluation decodes it, -> the prepared uint8 (3, H, W) image its views are cut
    from (``EvalProtocol.prepare``). The one decoding path of ``resnet eval`` and ``resnet predict``: any mode to RGB
    (``data.decode.to_rgb``), a JPEG decoded at reduced size down to ``protocol.decode_size``, EXIF orientation
    ignored as torchvision's ImageFolder ignores it (the pixels as stored, the way every published ImageNet model was
    trained and tested), torch's antialiased bilinear resize. Raises ``BadImageError``."""
    return protocol.prepare(pil_to_tensor(load_rgb(str(path), protocol.decode_size, max_pixels)))


def single_view_protocol(input_size: int = 224) -> EvalProtocol:
    """The paper's single-view test at a net's input size (Sec. 3.4: shorter side 256, centre 224 crop; scaled for
    other input sizes)."""
    return EvalProtocol("center", crop_size=input_size, resize_size=round(input_size * 256 / 224))


def single_view(path, family: str, input_size: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """One image file -> the uint8 (3, s, s) view a net of ``family`` is tested on, decoded by :func:`read_image`.
    ImageNet-style nets: the ``center`` protocol (:func:`single_view_protocol`). CIFAR nets: the whole image
    resized to the input (a CIFAR image is the whole scene, not a crop of it), with the same resize."""
    if family == "cifar":
        image = pil_to_tensor(load_rgb(str(path), input_size, max_pixels))
        return resize(image[None], (input_size, input_size))[0].contiguous()
    protocol = single_view_protocol(input_size)
    return protocol.views(read_image(path, protocol, max_pixels))[0][0].contiguous()


class Scorer:
    """Runs groups of same-size uint8 views through the model and averages softmax probabilities per image."""

    def __init__(self, model, normalization: Normalization, device, max_views: int, autocast_dtype=None,
                 channels_last: bool = False):
        self.model, self.device, self.max_views = model, torch.device(device), max(1, max_views)
        self.norm = normalization.to(self.device)
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last

    @torch.no_grad()
    def __call__(self, per_image: list[list[torch.Tensor]]) -> torch.Tensor:
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for k, views in enumerate(per_image):
            for v in views:
                groups.setdefault(tuple(v.shape[1:]), []).append((k, v))
        sums, counts = None, torch.zeros(len(per_image), device=self.device)
        for members in groups.values():
            x = torch.cat([v for _, v in members]).to(self.device, non_blocking=True)
            owner = torch.cat([torch.full((len(v),), k, device=self.device) for k, v in members])
            for i in range(0, len(x), self.max_views):
                probs = self._forward(x[i:i + self.max_views]).float().softmax(1)
                if sums is None:
                    sums = torch.zeros(len(per_image), probs.shape[1], device=self.device)
                sums.index_add_(0, owner[i:i + self.max_views], probs)
            counts.index_add_(0, owner, torch.ones(len(owner), device=self.device))
        return sums / counts[:, None]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return self.model(x)


@torch.no_grad()
def predict(model: torch.nn.Module, normalization: Normalization, image, tta: str = "center", *,
            crop_size: int = 224, resize_size: int = 256, scales: tuple[int, ...] = PAPER_SCALES, flips: bool = True,
            device: str | torch.device | None = None, autocast_dtype: torch.dtype | None = None,
            max_views: int = 64) -> torch.Tensor:
    """Class probabilities (num_classes,) of one image (PIL or uint8 (3, H, W)) under a test protocol, softmax
    averaged over its views. The model is used as it is (call ``model.eval()`` first)."""
    protocol = EvalProtocol(tta, crop_size, resize_size, tuple(scales), flips)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    prepared = protocol.prepare(as_uint8_chw(image)).to(device)
    return Scorer(model, normalization, device, max_views, autocast_dtype)([protocol.views(prepared)])[0]


class _EvalSamples(torch.utils.data.Dataset):
    def __init__(self, samples: list[tuple[str, int]], protocol: EvalProtocol, max_pixels: int):
        self.samples, self.protocol, self.max_pixels = samples, protocol, max_pixels

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            return read_image(path, self.protocol, self.max_pixels), label, None
        except BadImageError as e:
            return None, label, (path, str(e))


def _as_list(batch):
    return batch


def _score(loader, dataset: ImageFolderDataset, protocol: EvalProtocol, scorer: Scorer, device: torch.device) -> list:
    """(summed loss, top-1 mistakes, top-5 mistakes, images) of each batch of the loader; its unreadable files are
    reported to ``dataset`` and left out."""
    batches = []
    for batch in loader:
        good = []
        for image, label, failed in batch:
            if failed is not None:
                dataset.bad_file(*failed)
            else:
                good.append((image, label))
        if not good:
            continue
        probs = scorer([protocol.views(image.to(device, non_blocking=True)) for image, _ in good])
        y = torch.tensor([label for _, label in good], device=device)
        batches.append((-float(probs.gather(1, y[:, None]).clamp(min=1e-12).log().sum()), *topk_errors(probs, y),
                        len(good)))
    return batches


@torch.no_grad()
def evaluate_folder(model: torch.nn.Module, normalization: Normalization, data, split: str = "val",
                    tta: str = "center", batch_size: int = 256, device: str | torch.device = "cpu", workers: int = 4,
                    *, crop_size: int = 224, resize_size: int = 256, scales: tuple[int, ...] = PAPER_SCALES,
                    flips: bool = True, autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
                    limit: int | None = None, strict: bool = False, progress: bool = True, rank: int = 0,
                    world_size: int = 1) -> dict:
    """Top-1/top-5 error of ``model`` on an image-folder split under a test protocol.

    ``data``: a data folder (``DIR/split/<class>/*``; labels follow the class folders of ``DIR/train``) or an
    :class:`~resnet.data.imagefolder.ImageFolderDataset`. ``batch_size`` caps the views per forward pass (images are
    loaded ``batch_size // views_per_image`` at a time). ``limit`` evaluates an evenly spaced subset of that many
    images. Unreadable files are skipped with a warning and counted in ``skipped``. Under ``torchrun``, each of
    ``world_size`` ranks passes its ``rank`` and evaluates its shard of the batches; all get the result over every
    image, equal to one process's.
    """
    protocol = EvalProtocol(tta, crop_size, resize_size, tuple(scales), flips)
    dataset = data if isinstance(data, ImageFolderDataset) else open_image_folder(Path(data), split, strict=strict)
    samples = dataset.samples
    if limit is not None and limit < len(samples):
        samples = [samples[i * len(samples) // limit] for i in range(limit)]
    if not samples:
        raise UsageError(f"{dataset.root / dataset.split} holds no images to evaluate")
    device = torch.device(device)
    per_batch = max(1, batch_size // protocol.views_per_image)
    mine = shard(-(-len(samples) // per_batch), rank, world_size)
    loader = torch.utils.data.DataLoader(
        _EvalSamples(samples[mine.start * per_batch:mine.stop * per_batch], protocol, dataset.max_pixels),
        batch_size=per_batch, num_workers=workers, collate_fn=_as_list, pin_memory=device.type == "cuda",
        **({"prefetch_factor": 4} if workers else {}))
    if progress:
        loader = tqdm(loader, desc=f"eval {protocol.name}", unit="batch", dynamic_ncols=True)
    scorer = Scorer(model, normalization, device, batch_size, autocast_dtype, channels_last)
    was_training = model.training
    model.eval()
    skipped_before = len(dataset.skipped)
    try:
        batches = _score(loader, dataset, protocol, scorer, device)
    finally:
        model.train(was_training)
    skipped = len(dataset.skipped) - skipped_before
    if skipped:
        logging.getLogger("resnet.data").warning(
            f"warning: {dataset.root / dataset.split}: {skipped} unreadable files skipped in evaluation")
    ranks = gather([(batches, skipped)], world_size)  # every rank's, in rank order: the batches of the whole split
    batches, skipped = [b for part, _ in ranks for b in part], sum(n for _, n in ranks)
    if not batches:
        raise UsageError(f"no readable images in {dataset.root / dataset.split}")
    return {**tally(batches), "tta": protocol.name, "views_per_image": protocol.views_per_image,
            "protocol": protocol.to_dict(), "skipped": skipped, "skipped_at_scan": skipped_before,
            "split": dataset.split, "classes": len(dataset.classes)}
