"""The paper's building blocks (Sec. 3.2-3.3, Fig. 2 and Fig. 5).

Every block computes ``y = relu(F(x) + shortcut(x))`` (Eq. 1, Eq. 2 when the shortcut projects). A *plain* block is the
same block with no shortcut: ``y = relu(F(x))``.

The shortcut is built inside the block it serves. It is stored under the attribute name ``downsample`` only so that
torchvision state dicts load unchanged; it is the paper's ``W_s`` (or the identity).
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn
import torch.nn.functional as F

from .fused import bn_relu

SHORTCUT_OPTIONS = ("A", "B", "C")


class _SubsamplePad(torch.autograd.Function):
    """Option A's shortcut as one function: every ``stride``-th pixel of ``x``, with zero channels before and after,
    in ``x``'s layout both ways. PyTorch's slicing and padding build it in NCHW (the backward of a strided slice
    fills NCHW zeros, which then had to be made channels_last: 6.75 ms for a 128x16x32x32 bf16 gradient in
    isolation, against 0.24 ms for a channels_last buffer zeroed in place); here the buffers are made in the input's
    layout. On the whole ResNet-20 step the gain was within the noise (docs/speed.md)."""

    @staticmethod
    def forward(ctx, x, stride, before, after):
        n, c, h, w = x.shape
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((n, before + c + after, -(-h // stride), -(-w // stride)), dtype=x.dtype, device=x.device,
                          memory_format=layout)
        out[:, :before].zero_()
        out[:, before + c:].zero_()
        out[:, before:before + c].copy_(x[:, :, ::stride, ::stride])
        ctx.shape, ctx.layout, ctx.stride, ctx.before = x.shape, layout, stride, before
        return out

    @staticmethod
    def backward(ctx, grad):
        c, s = ctx.shape[1], ctx.stride
        gx = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout).zero_()
        gx[:, :, ::s, ::s].copy_(grad[:, ctx.before:ctx.before + c])
        return gx, None, None, None


def subsample_pad(x: torch.Tensor, stride: int, before: int, after: int) -> torch.Tensor:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():  # exporters and compilers are given plain ops
        return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, before, after))
    return _SubsamplePad.apply(x, stride, before, after)


torch.fx.wrap("subsample_pad")  # a leaf for torch.fx tracing (BN folding traces the model)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (Table 3): identity, subsampled by the stride, with zero channels added; no parameters.

    The extra channels are split evenly before and after the input channels, as in the widely used CIFAR reproduction
    (akamaster/pytorch_resnet_cifar10), so that its published weights give the same outputs here.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return subsample_pad(x, self.stride, self.pad_before, self.pad_after)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.pad_before + self.pad_after}"


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """W_s of Eq. 2: a 1x1 convolution (strided where the map shrinks) followed by BN."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


def make_shortcut(option: str | None, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The shortcut of one block. ``option=None`` means a plain block: no shortcut at all."""
    if option is None:
        return None
    same_shape = in_planes == out_planes and stride == 1
    if option == "C" or (option == "B" and not same_shape):
        return projection(in_planes, out_planes, stride)
    if same_shape:
        return nn.Identity()
    if option == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    if option == "B":  # unreachable: B projects whenever shapes differ
        raise AssertionError
    raise ValueError(f"unknown shortcut option {option!r}; choose one of {', '.join(SHORTCUT_OPTIONS)}")


class Block(nn.Module):
    """Common forward of every block: Eq. 1 with the shortcut, or the plain stack without one."""

    expansion = 1
    downsample: nn.Module | None

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """F(x) up to its last convolution: the BN after it is applied together with the addition and the ReLU."""
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:  # F(x, {W_i})
        return self.last_bn()(self.branch(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = None if self.downsample is None else self.downsample(x)
        return bn_relu(self.last_bn(), self.branch(x), shortcut)  # relu(F(x) + shortcut(x))


class BasicBlock(Block):
    """Two 3x3 layers (Fig. 5 left): ResNet-18/34 and all CIFAR nets."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(bn_relu(self.bn1, self.conv1(x)))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(Block):
    """1x1 reduce, 3x3, 1x1 restore with 4x expansion (Fig. 5 right): ResNet-50/101/152.

    ``variant="v1"`` strides the first 1x1 (the paper's published models); ``"v1.5"`` strides the 3x3 (torchvision).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str | None = "B", variant: str = "v1"):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = make_shortcut(shortcut, in_planes, planes * self.expansion, stride)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = bn_relu(self.bn1, self.conv1(x))
        return self.conv3(bn_relu(self.bn2, self.conv2(out)))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3
