"""The paper's networks: the ImageNet family (Table 1) and the CIFAR family (Sec. 4.2, Table 6), residual and plain.

A network is a stem, stages of blocks, and a head (global average pool + fc). Each stage's first block changes the
width and, from the second stage on, halves the map with a stride-2 convolution (Sec. 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, asdict, replace

import torch
import torch.fx
from torch import nn

from ..errors import UsageError, choices
from .blocks import SHORTCUT_OPTIONS, BasicBlock, Bottleneck
from .fused import bn_relu


class _ChannelsLastGrad(torch.autograd.Function):
    """The identity, whose backward hands the gradient on in channels_last (the forward input's layout)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last)


def keep_channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """Speed only, no change to any value. PyTorch's backward of average pooling returns contiguous NCHW gradients
    even for channels_last inputs (option A's subsampling has its own function, ``blocks.subsample_pad``); met by the
    channels_last gradients of the convolutions, every elementwise backward after them (ReLU backward, the shortcut
    additions) runs a slow mixed-layout path (what it costs: docs/speed.md)."""
    if (torch.is_grad_enabled() and x.requires_grad and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return _ChannelsLastGrad.apply(x)
    return x


torch.fx.wrap("keep_channels_last_grad")  # a leaf for torch.fx tracing (BN folding traces the model)


VARIANTS = ("v1", "v1.5")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one network. ``shortcut=None`` is a plain net."""

    name: str
    family: str  # "imagenet" (Table 1) or "cifar" (Sec. 4.2)
    block: str  # "basic" or "bottleneck"
    stage_blocks: tuple[int, ...]
    num_classes: int
    shortcut: str | None
    variant: str = "v1"
    zero_init_residual: bool = False

    @property
    def depth(self) -> int:
        per_block = 2 if self.block == "basic" else 3
        return per_block * sum(self.stage_blocks) + 2

    @property
    def plain(self) -> bool:
        return self.shortcut is None

    @property
    def label(self) -> str:
        """The net as the paper names it: ``ResNet-20``, ``plain-56``."""
        return f"{'plain' if self.plain else 'ResNet'}-{self.depth}"

    @property
    def input_size(self) -> int:
        return 224 if self.family == "imagenet" else 32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stage_blocks"] = list(self.stage_blocks)
        return d


# Table 1: blocks per stage of the ImageNet nets.
IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)
# Sec. 4.2: 6n+2 layers, n blocks on each of three stages of widths 16/32/64.
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
CIFAR_PLAIN_DEPTHS = (20, 32, 44, 56, 110)
CIFAR_WIDTHS = (16, 32, 64)


def _registry() -> dict[str, ModelConfig]:
    reg: dict[str, ModelConfig] = {}
    for depth, (block, stages) in IMAGENET_STAGES.items():
        # Option B is the paper's default for ImageNet (Sec. 3.3, Table 3); plain nets have no shortcut.
        reg[f"resnet{depth}"] = ModelConfig(f"resnet{depth}", "imagenet", block, stages, 1000, "B")
        reg[f"plain{depth}"] = ModelConfig(f"plain{depth}", "imagenet", block, stages, 1000, None)
    for depth in CIFAR_DEPTHS:
        n = (depth - 2) // 6
        # Option A everywhere on CIFAR (Sec. 4.2).
        reg[f"resnet{depth}"] = ModelConfig(f"resnet{depth}", "cifar", "basic", (n, n, n), 10, "A")
        if depth in CIFAR_PLAIN_DEPTHS:
            reg[f"plain{depth}"] = ModelConfig(f"plain{depth}", "cifar", "basic", (n, n, n), 10, None)
    return reg


MODELS: dict[str, ModelConfig] = _registry()


def model_names() -> list[str]:
    return list(MODELS)


def model_label(name: str) -> str:
    """A registered net's name as the paper writes it, read from its config, not from the letters of the name:
    ``resnet20`` -> ``ResNet-20``, ``plain56`` -> ``plain-56`` (in any case: Fig. 6's metrics name ``ResNet20``); a
    shortcut option after a dash stays (``resnet20-B`` -> ``ResNet-20-B``, the shortcut experiment's keys)."""
    net, dash, option = name.partition("-")
    return model_config(net.lower()).label + dash + option


def model_config(
    name: str,
    *,
    num_classes: int | None = None,
    shortcut: str | None = None,
    variant: str | None = None,
    zero_init_residual: bool = False,
) -> ModelConfig:
    """Resolve a model name and options into a config, refusing impossible combinations with a clear message."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of: {choices(MODELS)}")
    cfg = MODELS[name]
    changes: dict = {"zero_init_residual": zero_init_residual}
    if num_classes is not None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise UsageError(f"--num-classes must be a positive integer, got {num_classes!r}")
        changes["num_classes"] = num_classes
    if shortcut is not None:
        shortcut = shortcut.upper()
        if shortcut not in SHORTCUT_OPTIONS:
            raise UsageError(f"unknown shortcut option {shortcut!r}; choose one of: {choices(SHORTCUT_OPTIONS)}")
        if cfg.plain:
            raise UsageError(f"{name} is a plain net and has no shortcuts; use resnet{cfg.depth} for option {shortcut}")
        changes["shortcut"] = shortcut
    if variant is not None:
        if variant not in VARIANTS:
            raise UsageError(f"unknown variant {variant!r}; choose one of: {choices(VARIANTS)}")
        if cfg.block != "bottleneck" and variant != "v1":
            raise UsageError(
                f"--variant {variant} only changes bottleneck nets (50/101/152); {name} has basic blocks, drop --variant"
            )
        changes["variant"] = variant
    if zero_init_residual and cfg.plain:
        raise UsageError(f"--zero-init-residual needs shortcuts; {name} is plain (a zero branch would kill the signal)")
    return replace(cfg, **changes)


class ResNet(nn.Module):
    """Stem -> stages (``layer1``..``layerN``) -> global average pool -> ``fc``. Names follow torchvision."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        block = BasicBlock if cfg.block == "basic" else Bottleneck
        if cfg.family == "imagenet":
            widths, stem_width = IMAGENET_WIDTHS, 64
            # Table 1, conv1: 7x7, 64, stride 2, then the only max-pool of the net.
            self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            widths, stem_width = CIFAR_WIDTHS, CIFAR_WIDTHS[0]
            # Sec. 4.2: the first layer is a 3x3 conv with 16 filters; no pooling.
            self.conv1 = nn.Conv2d(3, stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)

        in_planes = stem_width
        for i, (width, n) in enumerate(zip(widths, cfg.stage_blocks)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                # the bottleneck's stride placement (v1 / v1.5) is its own option; the basic block has none
                extra = {"variant": cfg.variant} if block is Bottleneck else {}
                blocks.append(block(in_planes, width, stride if j == 0 else 1, cfg.shortcut, **extra))
                in_planes = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, cfg.num_classes)
        self.num_features = in_planes
        self.reset_parameters()

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def blocks(self) -> list[nn.Module]:
        return [b for stage in self.stages() for b in stage]

    def reset_parameters(self) -> None:
        # He initialisation ("Delving deep into rectifiers", cited in Sec. 3.4), BN at identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.zero_init_residual:
            # Later improvement (Goyal et al. 2017): each residual branch starts at zero, each block at identity.
            for b in self.blocks():
                nn.init.zeros_(b.last_bn().weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(bn_relu(self.bn1, self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(keep_channels_last_grad(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(name: str | ModelConfig, **options) -> ResNet:
    """``build_model("resnet56")``, ``build_model("resnet50", variant="v1.5")``, ``build_model("resnet34", shortcut="A")``."""
    cfg = name if isinstance(name, ModelConfig) else model_config(name, **options)
    return ResNet(cfg)
