"""Input normalisation: what the network sees is ``(x / 255 - mean) / std`` for uint8 images ``x``.

The paper subtracts the per-pixel mean image of the training set (Sec. 3.4, Sec. 4.2): ``mean`` is then a (3, H, W)
image and ``std`` is one. Other codebases use per-channel mean/std (torchvision, akamaster: ImageNet statistics), which
is ``mean`` and ``std`` of shape (3, 1, 1). Both are stored with the weights so that a model is evaluated with the
normalisation it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Normalization:
    mean: torch.Tensor  # (3, 1, 1) or (3, H, W), in [0, 1] units
    std: torch.Tensor  # (3, 1, 1)

    @property
    def kind(self) -> str:
        return "mean_image" if self.mean.shape[-1] > 1 else "mean_std"

    @classmethod
    def per_channel(cls, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> "Normalization":
        return cls(torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1))

    @classmethod
    def mean_image(cls, images_uint8: torch.Tensor) -> "Normalization":
        """Per-pixel mean of the training images (N, 3, H, W), as in the paper; std one."""
        mean = torch.zeros(images_uint8.shape[1:], dtype=torch.float64)
        for chunk in images_uint8.split(4096):
            mean += chunk.double().sum(0)
        return cls((mean / len(images_uint8) / 255).float(), torch.ones(3, 1, 1))

    def to(self, device) -> "Normalization":
        return Normalization(self.mean.to(device), self.std.to(device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float. A mean image of another size is resized to the input's."""
        x = x.float().div_(255)
        mean = self.mean.to(x.device)
        if mean.shape[-1] > 1 and mean.shape[-2:] != x.shape[-2:]:
            mean = F.interpolate(mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        return x.sub_(mean).div_(self.std.to(x.device))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"input.mean": self.mean.contiguous(), "input.std": self.std.contiguous()}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor]) -> "Normalization":
        return cls(tensors["input.mean"].float(), tensors["input.std"].float())
