"""``resnet export WEIGHTS --format onnx|torchscript|safetensors --out FILE``: weights for use outside this package."""

from __future__ import annotations

from .args import positive_int

# Copies of resnet.weights.export's constants (a test keeps them equal): registering must not import torch.
FORMATS = ("onnx", "torchscript", "safetensors")
DEFAULT_OPSET = 17


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export weights to ONNX, TorchScript or the project's safetensors format",
        description="Export weights (any format `resnet predict` accepts). ONNX and TorchScript files take float32 "
                    "input already normalised with the weights' normalisation, x = (rgb/255 - mean) / std, and output "
                    "logits; mean, std, classes and preprocessing are written to FILE.json. Each export is checked "
                    "against PyTorch on a batch of images.")
    p.add_argument("weights", metavar="WEIGHTS",
                   help="weight file (.safetensors, torchvision .pth, akamaster .th), run directory or shipped name")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from --out's extension)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (.onnx, .pt, .safetensors)")
    p.add_argument("--model", metavar="NAME", help="refuse weights of any other network than NAME")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--input-size", type=positive_int, metavar="PX",
                   help="square input size baked into the file (default: 32 CIFAR, 224 ImageNet; batch stays dynamic)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..weights.export import export
    from ..weights.importers import describe, load_any

    weights = load_any(args.weights, args.model)
    print(f"loaded {describe(weights)}")
    result = export(weights, args.out, args.format, opset=args.opset, input_size=args.input_size)
    print(f"wrote {result.path} ({result.format}) and {result.sidecar}")
    if result.max_abs_diff is not None:
        runtime = "onnxruntime" if result.format == "onnx" else "reloaded TorchScript"
        print(f"check: {runtime} vs PyTorch on {result.checked_images} images, max |logit diff| = "
              f"{result.max_abs_diff:.3g}")
    return 0
