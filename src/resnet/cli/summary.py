"""``resnet summary MODEL``: the Table 1 layer table, parameters and multiply-adds."""

from __future__ import annotations

from .args import positive_int
from .models import add_model_options, model_options


def register(sub) -> None:
    p = sub.add_parser("summary", help="layer table, parameter count and multiply-adds of a model")
    add_model_options(p)
    p.add_argument("--input-size", type=positive_int, metavar="PX", help="square input size (default: 224 ImageNet, 32 CIFAR)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..models import build_model, format_summary, summarize

    model = build_model(args.model, **model_options(args))
    s = summarize(model, args.input_size)
    print(json.dumps(s) if args.json else format_summary(s))
    return 0
