"""The reference each benchmark is measured against: the same network written the plain way, run in eager fp32 NCHW.

ImageNet nets: torchvision's ``resnetNN`` (with the stride moved to the first 1x1 of each bottleneck when the measured
model is the paper's "v1", so that both sides do the same multiply-adds). CIFAR nets: a standalone definition in the
style of the widely used reproduction (akamaster/pytorch_resnet_cifar10, BSD-2): option A shortcuts written as a lambda
around ``F.pad``, ``F.relu`` calls, ``out += shortcut``. Nothing here is used by the project's own models.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..models import ModelConfig


class _PadShortcut(nn.Module):
    """Option A as akamaster writes it: subsample by 2, zero-pad planes//4 channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = _PadShortcut(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1)
        self.layer2 = self._make_layer(32, num_blocks[1], 2)
        self.layer3 = self._make_layer(64, num_blocks[2], 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def check_reference(cfg: ModelConfig) -> None:
    """Raise UsageError unless ``cfg`` has a plain-PyTorch twin (before anything is built or timed)."""
    if cfg.plain:
        raise UsageError(f"{cfg.name} is a plain net; the references (torchvision, akamaster) have shortcuts: "
                         f"benchmark resnet{cfg.depth}")
    if cfg.family == "cifar" and cfg.shortcut != "A":
        raise UsageError("the CIFAR reference uses option A shortcuts, as the paper does")
    if cfg.family != "cifar" and cfg.shortcut != "B":
        raise UsageError("torchvision's ResNets use option B shortcuts")


def reference_model(cfg: ModelConfig) -> nn.Module:
    """The plain-PyTorch twin of the network ``cfg`` describes (residual nets only)."""
    check_reference(cfg)
    if cfg.family == "cifar":
        return CifarResNet(cfg.stage_blocks, cfg.num_classes)
    # torchvision only for the ImageNet reference (about a second to import)
    import torchvision

    net = getattr(torchvision.models, cfg.name)(weights=None, num_classes=cfg.num_classes)
    if cfg.block == "bottleneck" and cfg.variant == "v1":
        # torchvision strides the 3x3 ("v1.5"); the paper's models stride the first 1x1.
        for stage in (net.layer2, net.layer3, net.layer4):
            first = stage[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    return net
