"""``resnet eval``: top-1 / top-5 error of weights (a run, a file, an imported checkpoint, a shipped name)."""

from __future__ import annotations

from ..errors import UsageError
from .train import add_runtime_options

SPLITS = ("val", "test", "train", "trainval")


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate weights on a dataset split")
    p.add_argument("--weights", required=True, metavar="RUN_DIR|FILE|NAME",
                   help="a run directory, a .safetensors file, a torchvision or akamaster checkpoint, or a shipped name")
    p.add_argument("--model", help="model name, when the weights file does not say")
    p.add_argument("--data", help="dataset (default: the one the weights were trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="val", choices=SPLITS,
                   help="val: the held-out 5k (default); test: the official test set; train: the 45k; trainval: all 50k")
    p.add_argument("--tta", default="center", choices=("center", "flip", "shift", "10crop", "multiscale", "multicrop"),
                   help="test protocol: image folders center|10crop|multiscale|multicrop (Sec. 5 of PAPER.md); CIFAR "
                        "center (the single image, the paper's), flip (image and mirror) or shift (image and four "
                        "1-pixel shifts, each with its mirror), softmax averaged over the views")
    p.add_argument("--batch-size", type=int, help="images per forward pass, views included (CIFAR 250, folders 256)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..runtime import resolve_runtime
    from ..weights.importers import load_any

    rt = resolve_runtime(args.device, args.precision, args.channels_last, False)
    weights = load_any(args.weights, model=args.model)
    model = rt.prepare(weights.model).eval()
    data = args.data or weights.meta.get("data") or ("cifar10" if model.config.family == "cifar" else "imagefolder")
    if data in ("imagefolder", "imagenet"):
        from ..evaluation.tta import evaluate_folder

        if args.tta in ("flip", "shift"):
            raise UsageError(f"--tta {args.tta} is for CIFAR; image folders have 10crop (centre, corners and their "
                             "mirrors)")

        # batch_size counts views per forward pass (10-crop at 5 scales is 50 views of one image)
        result = evaluate_folder(model, weights.normalization, args.data_dir, args.split, tta=args.tta,
                                 batch_size=args.batch_size or 256, device=rt.device,
                                 workers=args.workers, autocast_dtype=rt.autocast_dtype,
                                 channels_last=rt.channels_last, progress=not args.json)
    else:
        from ..data.cifar import load_split
        from ..evaluation.evaluate import CIFAR_TTA, evaluate_images

        if args.tta not in CIFAR_TTA:
            raise UsageError(f"--tta {args.tta} is for image folders; CIFAR has {', '.join(CIFAR_TTA)}")
        split = load_split(data, args.data_dir, args.split)
        if len(split.classes) > model.config.num_classes:
            raise UsageError(f"the weights have {model.config.num_classes} classes but {data} has {len(split.classes)}")
        result = evaluate_images(model, weights.normalization, split.images, split.labels, batch_size=args.batch_size or 250,
                                 device=rt.device, autocast_dtype=rt.autocast_dtype, progress=not args.json,
                                 tta=args.tta)
    result.update(model=model.config.name, data=data, split=args.split, weights=str(args.weights),
                  precision=rt.precision, tta=args.tta)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{model.config.name} on {data} {args.split}: top-1 error {result['top1_error']:.2f}%, "
              f"top-5 error {result['top5_error']:.2f}% ({result['images']} images, {rt.precision})")
    return 0
