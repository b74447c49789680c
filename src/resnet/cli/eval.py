"""``resnet eval``: top-1 / top-5 error of weights (a run, a file, an imported checkpoint, a shipped name)."""

from __future__ import annotations

import json

from ..data.sources import NAMES, PROTOCOLS, all_protocols
from .args import dataset, nonnegative_int, positive_int
from .train import add_runtime_options

SPLITS = ("val", "test", "train", "trainval")


def protocol_help(kind: str) -> str:
    return "; ".join(f"{name} ({about})" for name, about in PROTOCOLS[kind].items())


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate weights on a dataset split")
    p.add_argument("--weights", required=True, metavar="RUN_DIR|FILE|NAME",
                   help="a run directory, a .safetensors file, a torchvision or akamaster checkpoint, or a shipped name")
    p.add_argument("--model", help="model name, when the weights file does not say")
    p.add_argument("--data", type=dataset, metavar="|".join(NAMES),
                   help="dataset (default: the one the weights were trained on)")
    p.add_argument("--data-dir", help="where the dataset is (image folders: DIR/<split>/<class>/*)")
    p.add_argument("--split", default="val", choices=SPLITS,
                   help="val: the held-out 5k (default); test: the official test set; train: the 45k; trainval: all 50k")
    p.add_argument("--tta", default="center", choices=all_protocols(),
                   help="test protocol, softmax averaged over its views. CIFAR: " + protocol_help("memory") +
                        ". Image folders: " + protocol_help("folder"))
    p.add_argument("--batch-size", type=positive_int,
                   help="images per forward pass, views included (CIFAR 250, folders 256)")
    p.add_argument("--workers", type=nonnegative_int,
                   help="data loader processes for image folders (default: one per core, at most 4; 0: none)")
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="evaluate data whose classes the weights do not name, taking its classes in sorted order "
                        "as the weights' classes 0..k-1 (by default each class is looked up in the weights' own "
                        "class list, and an unknown one is an error)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_options(p, tuned=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.sources import data_source, default_source
    from ..data.workers import default_workers
    from ..evaluation.classes import match_classes, relabel
    from ..evaluation.evaluator import evaluator
    from ..runtime import runtime_name, select_runtime
    from ..weights.importers import load_any

    rt = select_runtime(args.device, args.runtime, args.precision, args.channels_last,
                        compile=bool(args.compile)).runtime  # one pass over the data: not tuned, compiled if asked
    weights = load_any(args.weights, model=args.model)
    model = rt.prepare(weights.model).eval()
    named = args.data or weights.meta.get("data")
    source = data_source(named) if named else default_source(model.config.family)
    source.check_protocol(args.tta)
    data = source.open(args.split, args.data_dir, own_classes=True)
    # Labels follow the weights' own class list, not the order of the classes the data happens to hold.
    labels = match_classes(data.classes, weights.meta.get("classes"), model.config.num_classes,
                           allow_mismatch=args.allow_class_mismatch, where=source.where(args.split, args.data_dir),
                           weights=f"the weights {args.weights}")
    # batch_size counts views per forward pass (10-crop at 5 scales is 50 views of one image)
    evaluate = evaluator(source, relabel(data, labels), weights.normalization, args.split, device=rt.device,
                         autocast_dtype=rt.autocast_dtype, channels_last=rt.channels_last, batch_size=args.batch_size,
                         workers=default_workers() if args.workers is None else args.workers,
                         progress=not args.json)
    result = evaluate(rt.compile_model(model, inference=True), args.tta)
    result.update(model=model.config.name, data=source.name, split=args.split, weights=str(args.weights),
                  precision=rt.precision, runtime=runtime_name(rt), tta=args.tta)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{model.config.name} on {source.name} {args.split}: top-1 error {result['top1_error']:.2f}%, "
              f"top-5 error {result['top5_error']:.2f}% ({result['images']} images, {rt.precision})")
    return 0
