"""The convolution floor (``python -m resnet.bench.floor resnet20 train``): how fast the training step (or inference)
could be if everything but the convolutions cost nothing, with the convolution library this machine has.

Every convolution and the fc of the model are recorded from one forward pass (input shape, weight, stride, padding,
dtype); each distinct one is timed alone, forward and, for training, backward (``aten.convolution_backward``: the
weight gradient, and the input gradient except for the first layer, whose input is the image), in the layout and
precision the runtime uses. The floor is the sum over all layers. Timed in the same alternating rounds: the model's
own step and the reference's (eager fp32 NCHW), and the yardstick (the machine's best native matmul rate).

It answers the question the ratios alone cannot: of the time a step takes, how much is the convolutions themselves
(which only a faster convolution library can shorten), and how much is everything else (BN, ReLU, additions, copies,
the optimizer: what fusing and layouts can shorten). ``ref / floor`` is the most any change outside the
convolutions can reach against the reference; if a target ratio is above it, the target needs faster convolutions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import build_model, count_macs, model_config
from ..models.resnet import ModelConfig
from ..models.fold import fold_batchnorm
from ..runtime import cpu_capability, native_bf16, yardstick_dtype
from .candidates import _step, alternating_rounds
from .matmul import MatmulProbe


@dataclass(frozen=True)
class Layer:
    """One convolution (or the fc, as a 1x1 convolution over a 1x1 map) as the step runs it."""

    input: tuple[int, ...]  # N, C, H, W
    weight: tuple[int, ...]  # K, C / groups, R, S
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    bias: bool
    first: bool  # its input is the image: no input gradient is needed

    @property
    def output(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.input
        k, _, r, s = self.weight
        return (n, k, (h + 2 * self.padding[0] - r) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - s) // self.stride[1] + 1)

    @property
    def macs(self) -> int:
        """Multiply-adds of the forward pass, for the whole batch."""
        n, k, p, q = self.output
        return n * k * p * q * self.weight[1] * self.weight[2] * self.weight[3]

    def describe(self) -> str:
        n, c, h, w = self.input
        k, _, r, s = self.weight
        return f"{c:>4}->{k:<4} {r}x{s} /{self.stride[0]} at {h}x{w}"


def conv_layers(model: nn.Module, batch: int, input_size: int) -> Counter:
    """The model's convolutions and linear layers, as distinct :class:`Layer` s with how often each occurs."""
    layers: Counter = Counter()
    seen_input = []

    def conv_hook(mod: nn.Conv2d, inp, out):
        x = inp[0]
        layers[Layer(tuple(x.shape), tuple(mod.weight.shape), tuple(mod.stride), tuple(mod.padding), mod.groups,
                     mod.bias is not None, first=not seen_input)] += 1
        seen_input.append(True)

    def linear_hook(mod: nn.Linear, inp, out):
        x = inp[0]
        layers[Layer((x.shape[0], mod.in_features, 1, 1), (mod.out_features, mod.in_features, 1, 1), (1, 1), (0, 0),
                     1, mod.bias is not None, first=False)] += 1

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(batch, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    return layers


def layer_steps(layer: Layer, mode: str, dtype: torch.dtype, channels_last: bool):
    """The forward, and for training the backward, of one layer alone, as callables."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(layer.input, generator=g).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(layer.weight, generator=g).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(layer.weight[0], generator=g).to(dtype) if layer.bias else None
    gy = torch.randn(layer.output, generator=g).to(dtype).contiguous(memory_format=fmt)

    def forward():
        F.conv2d(x, w, b, layer.stride, layer.padding, 1, layer.groups)

    def backward():
        torch.ops.aten.convolution_backward(gy, x, w, [layer.weight[0]] if layer.bias else None, list(layer.stride),
                                            list(layer.padding), [1, 1], False, [0, 0], layer.groups,
                                            [not layer.first, True, layer.bias])

    return (forward, backward) if mode == "train" else (forward,)


@dataclass
class Floor:
    """What :func:`convolution_floor` measured: the median seconds of each layer's forward (and backward) pass, of
    the model's own step and of the reference's, and the yardstick's rate in the same rounds."""

    model: str
    mode: str
    batch: int
    input_size: int
    dtype: torch.dtype
    channels_last: bool
    layers: Counter
    flops: int
    layer_s: dict  # (layer index, "forward" | "backward") -> seconds
    step_s: float
    reference_s: float
    yardstick_gflops: float
    rounds: int
    seconds: float  # of all the rounds

    @property
    def floor_s(self) -> float:
        """The sum over the layers: the step if everything but the convolutions cost nothing."""
        return sum(n * (self.layer_s[(i, "forward")] + self.layer_s.get((i, "backward"), 0.0))
                   for i, n in enumerate(self.layers.values()))


def convolution_floor(cfg: ModelConfig, mode: str, batch: int, *, bf16: bool, channels_last: bool,
                      rounds: int = 5, log=None) -> Floor:
    """Time every distinct convolution of ``cfg`` alone, the model's step and the reference's, in alternating
    rounds with the yardstick sampled after each (on the CPU, with the threads set). ``log`` receives one line that
    says what is timed, before the rounds."""
    net = build_model(cfg)
    if mode == "eval":
        net = fold_batchnorm(net)
    layers = conv_layers(net, batch, cfg.input_size)
    macs = sum(n * layer.macs for layer, n in layers.items())
    assert macs == batch * count_macs(build_model(cfg), cfg.input_size), "conv_layers missed a layer"
    cpu = torch.device("cpu")
    (log or (lambda s: None))(
        f"{cfg.name} {mode}, batch {batch} at {cfg.input_size}x{cfg.input_size}, {'bf16' if bf16 else 'fp32'}, "
        f"{'channels_last' if channels_last else 'NCHW'}, {torch.get_num_threads()} thread(s), "
        f"{cpu_capability()}{'' if native_bf16(cpu) else ', no native bf16'}, torch {torch.__version__}; "
        f"{len(layers)} distinct layers of {sum(layers.values())}")
    dtype = torch.bfloat16 if bf16 else torch.float32
    timed = {"reference": _step(cfg, mode, batch, False, False, False, None),
             "ours": _step(cfg, mode, batch, bf16, channels_last, mode == "eval", None)}
    for i, layer in enumerate(layers):
        for part, fn in zip(("forward", "backward"), layer_steps(layer, mode, dtype, channels_last)):
            timed[(i, part)] = fn
    probe = MatmulProbe(yardstick_dtype(cpu))
    for fn in timed.values():  # warm-up: oneDNN builds its primitives on the first call
        fn(), fn()
    started = time.perf_counter()
    med = {k: statistics.median(v) for k, v in alternating_rounds(timed, rounds, after_round=probe.sample).items()}
    return Floor(cfg.name, mode, batch, cfg.input_size, dtype, channels_last, layers,
                 (3 if mode == "train" else 1) * 2 * macs, {k: v for k, v in med.items() if isinstance(k, tuple)},
                 med["ours"], med["reference"], probe.gflops, rounds, time.perf_counter() - started)


def format_floor_table(f: Floor) -> str:
    """One line per distinct layer: count, forward (and backward) ms and GFLOP/s, total ms."""
    train = f.mode == "train"
    lines = [f"{'layer':28s} {'count':>5s} {'fwd ms':>8s} {'GFLOP/s':>8s}"
             + (f" {'bwd ms':>8s} {'GFLOP/s':>8s}" if train else "") + f" {'total ms':>9s}"]
    for i, (layer, n) in enumerate(f.layers.items()):
        fwd = f.layer_s[(i, "forward")]
        bwd = f.layer_s.get((i, "backward"), 0.0)
        bwd_flops = (1 if layer.first else 2) * 2 * layer.macs
        line = f"{layer.describe():28s} {n:5d} {1e3 * fwd:8.2f} {2 * layer.macs / fwd / 1e9:8.1f}"
        if train:
            line += f" {1e3 * bwd:8.2f} {bwd_flops / bwd / 1e9:8.1f}"
        lines.append(line + f" {1e3 * n * (fwd + bwd):9.1f}")
    return "\n".join(lines)


def format_floor(f: Floor) -> str:
    """The layers' table, then the floor against the model's step, the reference and the yardstick."""
    floor, step, ref, yard = f.floor_s, f.step_s, f.reference_s, f.yardstick_gflops
    yard_dtype = str(yardstick_dtype(torch.device("cpu"))).removeprefix("torch.")
    return "\n".join([
        format_floor_table(f),
        f"convolution floor: {1e3 * floor:.1f} ms  ({f.flops / floor / 1e9:.1f} GFLOP/s, "
        f"{f.flops / floor / 1e9 / yard:.0%} of the {yard_dtype} matmul)",
        f"ours, whole {'step' if f.mode == 'train' else 'forward'}: {1e3 * step:.1f} ms  "
        f"({f.flops / step / 1e9 / yard:.0%} of the matmul); the convolutions are {floor / step:.0%} of it, "
        f"everything else {1e3 * (step - floor):.1f} ms",
        f"reference (eager fp32 NCHW): {1e3 * ref:.1f} ms;  ours / reference {ref / step:.2f}x;  "
        f"at the floor (everything else free) {ref / floor:.2f}x",
        f"yardstick: {yard_dtype} matmul 2048x2048, same rounds: {yard:.0f} GFLOP/s; {f.rounds} rounds in "
        f"{f.seconds:.0f} s"])


def main(argv: list[str] | None = None) -> None:
    """The script (``python -m resnet.bench.floor``): the header line, then the table once the rounds are done."""
    p = argparse.ArgumentParser(prog="python -m resnet.bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("mode", choices=("train", "eval"))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fp32", action="store_true", help="fp32 even where bf16 is native (the default there is bf16)")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cpu = torch.device("cpu")
    cfg: ModelConfig = model_config(a.model)
    batch = a.batch_size or (128 if cfg.family == "cifar" else 32)
    bf16 = native_bf16(cpu) and not a.fp32
    floor = convolution_floor(cfg, a.mode, batch, bf16=bf16, channels_last=not a.nchw, rounds=a.rounds,
                              log=lambda line: print(line, flush=True))
    print(format_floor(floor))


if __name__ == "__main__":
    main()
