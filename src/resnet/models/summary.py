"""Parameter and multiply-add counts, and a layer table in the form of the paper's Table 1."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UsageError
from .resnet import ResNet


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Multiply-adds of one forward pass on one image, counted by PyTorch's FLOP counter (convolutions and the fc;
    BN, ReLU, pooling and additions are not counted, as in the paper)."""
    x = torch.zeros(1, channels, input_size, input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2  # the counter reports FLOPs = 2 x multiply-adds


def check_input_size(model: ResNet, input_size: int) -> None:
    smallest = 32 if model.config.family == "imagenet" else 4
    if input_size < smallest:
        raise UsageError(f"input size {input_size} is too small for {model.config.name}; use at least {smallest}")


def layer_table(model: ResNet, input_size: int | None = None) -> list[dict]:
    """One row per stage as in Table 1: name, output size, blocks, and the block's layer widths."""
    cfg = model.config
    size = input_size or cfg.input_size
    check_input_size(model, size)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, m in [("conv1", model.maxpool if cfg.family == "imagenet" else model.bn1)]
        + [(f"layer{i + 1}", s) for i, s in enumerate(model.stages())]
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    stem = "7x7, 64, stride 2; 3x3 max pool, stride 2" if cfg.family == "imagenet" else "3x3, 16"
    rows = [{"stage": "conv1", "output": _hw(shapes["conv1"]), "blocks": 1, "layers": stem}]
    for i, stage in enumerate(model.stages()):
        first = stage[0]
        convs = [m for n, m in first.named_children() if n.startswith("conv")]
        layers = ", ".join(f"{c.kernel_size[0]}x{c.kernel_size[1]} {c.out_channels}" for c in convs)
        rows.append({"stage": f"layer{i + 1}", "output": _hw(shapes[f"layer{i + 1}"]), "blocks": len(stage), "layers": f"[{layers}]"})
    rows.append({"stage": "head", "output": "1x1", "blocks": 1, "layers": f"avg pool, {logits.shape[1]}-d fc, softmax"})
    return rows


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[-2]}x{shape[-1]}"


def summarize(model: ResNet, input_size: int | None = None) -> dict:
    cfg = model.config
    size = input_size or cfg.input_size
    table = layer_table(model, size)
    return {
        "model": cfg.name,
        "family": cfg.family,
        "depth": cfg.depth,
        "shortcut": cfg.shortcut or "none (plain)",
        "variant": cfg.variant if cfg.block == "bottleneck" else None,
        "num_classes": cfg.num_classes,
        "input_size": size,
        "params": count_params(model),
        "macs": count_macs(model, size),
        "stages": table,
    }


def format_summary(s: dict) -> str:
    lines = [f"{s['model']}: {s['depth']} layers, shortcut {s['shortcut']}"
             + (f", variant {s['variant']}" if s["variant"] else "") + f", {s['num_classes']} classes"]
    w = [max(len(str(r[k])) for r in s["stages"] + [{"stage": "stage", "output": "output", "blocks": "blocks", "layers": "layers"}])
         for k in ("stage", "output", "blocks", "layers")]
    header = ("stage", "output", "blocks", "layers")
    lines.append("  ".join(h.ljust(n) for h, n in zip(header, w)))
    for r in s["stages"]:
        lines.append("  ".join(str(r[k]).ljust(n) for k, n in zip(header, w)))
    lines.append(f"params: {s['params']:,} ({s['params'] / 1e6:.2f}M)")
    scale = "%.3ge9" % (s["macs"] / 1e9) if s["macs"] >= 1e9 else "%.3ge6" % (s["macs"] / 1e6)
    lines.append(f"multiply-adds at {s['input_size']}x{s['input_size']}: {s['macs']:,} ({scale})")
    return "\n".join(lines)
