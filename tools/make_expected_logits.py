"""Make tests/fixtures/expected_logits.safetensors: the logits of every registered model on a fixed input, as
torchvision stores expected outputs per model (its test/expect/ModelTester.test_*.pkl; here safetensors, no pickle).

The recipe, one per model name (``MODELS``), all in float64 on the CPU:

- weights: ``torch.manual_seed(0)`` then ``build_model(name)`` (the paper's He initialisation, BN at identity);
- BN: every BN's affine parameters and running statistics drawn from ``torch.Generator().manual_seed(1)`` (scale
  U(0.25, 0.75), shift N(0, 0.1), mean N(0, 0.1), variance U(0.5, 1.5)), so that eval-mode BN is pinned for real
  and not at the identity of a fresh net (one forward pass per model: no BN calibration pass);
- the fixed input needs no random generator: ``sin(0.1 * k + 0.3 * sqrt(k))`` over the flat index ``k``, shaped
  2x3x32x32 for the CIFAR nets and 1x3x32x32 for the ImageNet nets (32: the smallest size they accept);
- the logits of the model in eval mode on that input; the first 10 logits of each row are stored.

With each model's logits the file keeps a fingerprint of its initial state (the sum and the sum of squares of every
tensor of its state dict, BN included), so that a failing test can say whether the initialisation or the
forward computation drifted. Run again only after a deliberate change of either, and say why in the commit:

    python tools/make_expected_logits.py [--out tests/fixtures/expected_logits.safetensors] [--only resnet20 ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "expected_logits.safetensors"
SEED = 0
KEEP = 10  # logits kept per row
SHAPES = {"cifar": (2, 3, 32, 32), "imagenet": (1, 3, 32, 32)}


def fixed_input(family: str) -> torch.Tensor:
    shape = SHAPES[family]
    k = torch.arange(math.prod(shape), dtype=torch.float64)
    return torch.sin(0.1 * k + 0.3 * k.sqrt()).reshape(shape)


def fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """(2,) float64: the sum and the sum of squares of every tensor of the state dict."""
    total, squares = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for t in model.state_dict().values():
        t = t.detach().double()
        total += t.sum()
        squares += (t * t).sum()
    return torch.stack([total, squares])


@torch.no_grad()
def model_outputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe above for one model name: (first KEEP logits of each row, fingerprint of the model's state)."""
    from resnet.models import MODELS, build_model

    torch.manual_seed(SEED)
    model = build_model(name).double()
    g = torch.Generator().manual_seed(SEED + 1)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        c = bn.num_features
        bn.weight.copy_(0.25 + 0.5 * torch.rand(c, generator=g, dtype=torch.float64))
        bn.bias.copy_(0.1 * torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_mean.copy_(0.1 * torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
    model.eval()
    logits = model(fixed_input(MODELS[name].family))
    return logits[:, :KEEP].contiguous(), fingerprint(model)


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import load_file, save_file

    from resnet.models import MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--only", nargs="*", help="recompute only these models, keep the others' stored values")
    args = p.parse_args(argv)
    tensors = load_file(args.out) if args.only and args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(MODELS):
        logits, state = model_outputs(name)
        tensors[f"{name}.logits"], tensors[f"{name}.fingerprint"] = logits, state
        print(f"{name}: logits[0, :3] {logits[0, :3].tolist()}", file=sys.stderr, flush=True)
        save_file(tensors, args.out, metadata={  # after each model: a long run keeps what it made
            "recipe": "tools/make_expected_logits.py", "seed": str(SEED), "keep": str(KEEP), "dtype": "float64",
            "torch": torch.__version__})


if __name__ == "__main__":
    main()
