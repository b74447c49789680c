"""Make tests/fixtures/akamaster-resnet20-layer2.0.safetensors: one real option-A block of akamaster's published
ResNet-20 checkpoint, a small input and the block's output computed by an independent, straightforward
implementation of akamaster's block -- so that the default test suite checks our importer and our option-A shortcut
against real weights without the 1.1 MB checkpoint.

The block is ``layer2.0``, the first block of stage 2: stride 2, 16 -> 32 channels, where option A subsamples
``x[:, :, ::2, ::2]`` and zero-pads ``planes // 4`` = 8 channels on each side (akamaster's ``LambdaLayer``). The tensors
keep akamaster's key names (``module.layer2.0.conv1.weight`` ...) and are stored unchanged (float32); the file's
metadata holds the checkpoint's name and sha256.

    python tools/make_akamaster_fixture.py [--checkpoint PATH/resnet20-12fca82f.th]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "layer2.0"
OUT = ROOT / "tests" / "fixtures" / "akamaster-resnet20-layer2.0.safetensors"


def akamaster_block(x: torch.Tensor, w: dict[str, torch.Tensor], stride: int = 2) -> torch.Tensor:
    """akamaster's ``BasicBlock`` with option A, written out in functional form (eval-mode BN, eps 1e-5)."""
    def bn(y, name):
        return F.batch_norm(y, w[f"{name}.running_mean"], w[f"{name}.running_var"], w[f"{name}.weight"],
                            w[f"{name}.bias"], training=False, eps=1e-5)

    out = F.relu(bn(F.conv2d(x, w["conv1.weight"], stride=stride, padding=1), "bn1"))
    out = bn(F.conv2d(out, w["conv2.weight"], stride=1, padding=1), "bn2")
    planes = w["conv1.weight"].shape[0]
    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
    return F.relu(out + shortcut)


def main() -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=Path("resnet20-12fca82f.th"))
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    sha = hashlib.sha256(args.checkpoint.read_bytes()).hexdigest()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    prefix = f"module.{BLOCK}."
    tensors = {k: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(2, 16, 8, 8, generator=g))  # a block's input is the output of a ReLU
    w64 = {k[len(prefix):]: v.double() for k, v in tensors.items()}
    expected = akamaster_block(x.double(), w64).float()
    tensors.update(input=x, expected=expected)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out, metadata={"checkpoint": args.checkpoint.name, "sha256": sha, "block": BLOCK,
                                           "best_prec1": f"{float(ckpt['best_prec1']):.2f}",
                                           "expected": "akamaster_block() in float64, stored as float32"})
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(tensors) - 2} tensors of {BLOCK}, "
          f"input {tuple(x.shape)}, output {tuple(expected.shape)}")


if __name__ == "__main__":
    main()
