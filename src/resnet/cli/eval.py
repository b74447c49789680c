"""``resnet eval``: top-1 / top-5 error of weights (a run, a file, an imported checkpoint, a shipped name)."""

from __future__ import annotations

from ..errors import UsageError
from .args import nonnegative_int, positive_int
from .train import add_runtime_options

SPLITS = ("val", "test", "train", "trainval")


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate weights on a dataset split")
    p.add_argument("--weights", required=True, metavar="RUN_DIR|FILE|NAME",
                   help="a run directory, a .safetensors file, a torchvision or akamaster checkpoint, or a shipped name")
    p.add_argument("--model", help="model name, when the weights file does not say")
    p.add_argument("--data", help="dataset (default: the one the weights were trained on)")
    p.add_argument("--data-dir", help="where the dataset is (image folders: DIR/<split>/<class>/*)")
    p.add_argument("--split", default="val", choices=SPLITS,
                   help="val: the held-out 5k (default); test: the official test set; train: the 45k; trainval: all 50k")
    p.add_argument("--tta", default="center", choices=("center", "flip", "shift", "10crop", "multiscale", "multicrop"),
                   help="test protocol: image folders center|10crop|multiscale|multicrop (the paper's Sec. 3.4 "
                        "and Table 4); CIFAR "
                        "center (the single image, the paper's), flip (image and mirror) or shift (image and four "
                        "1-pixel shifts, each with its mirror), softmax averaged over the views")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per forward pass, views included (CIFAR 250, folders 256)")
    p.add_argument("--workers", type=nonnegative_int,
                   help="data loader processes for image folders (default: one per core, at most 4; 0: none)")
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="evaluate data whose classes the weights do not name, taking its classes in sorted order "
                        "as the weights' classes 0..k-1 (by default each class is looked up in the weights' own "
                        "class list, and an unknown one is an error)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..evaluation.classes import match_classes
    from ..runtime import Runtime, default_workers, named_runtime, resolve_runtime
    from ..weights.importers import load_any

    if args.runtime == "auto":  # one pass over the data: the fixed defaults, not tuned
        rt = resolve_runtime(args.device, args.precision, args.channels_last, False)
    else:
        rt = named_runtime(args.runtime, args.device, False)
        rt = Runtime(rt.device, rt.precision if args.precision == "auto" else args.precision,
                     rt.channels_last if args.channels_last is None else args.channels_last, False)
    weights = load_any(args.weights, model=args.model)
    model = rt.prepare(weights.model).eval()
    data = args.data or weights.meta.get("data") or ("cifar10" if model.config.family == "cifar" else "imagefolder")
    # Labels follow the weights' own class list, not the order of the classes the data happens to hold.
    named = f"the weights {args.weights}"
    weight_classes, outputs = weights.meta.get("classes"), model.config.num_classes
    if data in ("imagefolder", "imagenet"):
        from pathlib import Path

        from ..data.imagefolder import class_folders, open_image_folder
        from ..evaluation.classes import relabel_folder
        from ..evaluation.tta import evaluate_folder

        if args.tta in ("flip", "shift"):
            raise UsageError(f"--tta {args.tta} is for CIFAR; image folders have 10crop (centre, corners and their "
                             "mirrors)")
        if not args.data_dir:
            raise UsageError(f"--data {data} needs --data-dir DIR, with DIR/{args.split}/<class>/<images>")
        split_dir = Path(args.data_dir) / args.split
        dataset = open_image_folder(args.data_dir, args.split, classes=class_folders(split_dir))
        labels = match_classes(dataset.classes, weight_classes, outputs, allow_mismatch=args.allow_class_mismatch,
                               where=str(split_dir), weights=named)
        # batch_size counts views per forward pass (10-crop at 5 scales is 50 views of one image)
        result = evaluate_folder(model, weights.normalization, relabel_folder(dataset, labels), args.split,
                                 tta=args.tta, batch_size=args.batch_size or 256, device=rt.device,
                                 workers=default_workers() if args.workers is None else args.workers,
                                 autocast_dtype=rt.autocast_dtype, channels_last=rt.channels_last,
                                 progress=not args.json)
    else:
        from ..data.cifar import load_split
        from ..evaluation.evaluate import CIFAR_TTA, evaluate_images

        if args.tta not in CIFAR_TTA:
            raise UsageError(f"--tta {args.tta} is for image folders; CIFAR has {', '.join(CIFAR_TTA)}")
        split = load_split(data, args.data_dir, args.split)
        labels = match_classes(split.classes, weight_classes, outputs, allow_mismatch=args.allow_class_mismatch,
                               where=f"{data} {args.split}", weights=named)
        result = evaluate_images(model, weights.normalization, split.images, _relabel(split.labels, labels),
                                 batch_size=args.batch_size or 250,
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


def _relabel(y, labels: list[int]):
    """CIFAR labels (the data's class order) -> the weights' class order."""
    import torch

    return y if labels == list(range(len(labels))) else torch.tensor(labels, dtype=y.dtype)[y]
