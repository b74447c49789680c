"""``resnet models`` and ``resnet summary``'s shared model options."""

from __future__ import annotations

from .args import positive_int


def add_model_options(p, *, required: bool = True) -> None:
    """The options that pick a network; used by every command that builds one."""
    if required:
        p.add_argument("model", metavar="MODEL", help="a model name (see `resnet models`)")
    p.add_argument("--shortcut", metavar="A|B|C", help="shortcut option (Table 3); default A on CIFAR, B on ImageNet")
    p.add_argument("--variant", metavar="v1|v1.5", help="bottleneck stride on the first 1x1 (v1, the paper) or the 3x3 (v1.5)")
    p.add_argument("--num-classes", type=positive_int, metavar="N", help="number of classes (default 10 on CIFAR, 1000 on ImageNet)")
    p.add_argument("--zero-init-residual", action="store_true", help="zero the last BN of each residual branch")


def model_options(args) -> dict:
    return dict(num_classes=args.num_classes, shortcut=args.shortcut, variant=args.variant,
                zero_init_residual=args.zero_init_residual)


def register(sub) -> None:
    p = sub.add_parser("models", help="list every model name and the weights shipped with the package")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..models import MODELS
    from ..weights.pretrained import shipped

    weights = shipped()
    if args.json:
        print(json.dumps({"models": {name: cfg.to_dict() for name, cfg in MODELS.items()}, "weights": weights}))
        return 0
    for name, cfg in MODELS.items():
        kind = "plain" if cfg.plain else f"residual, option {cfg.shortcut}"
        print(f"{name:<12} {cfg.family:<8} {cfg.depth:>4} layers  {cfg.block:<10}  {kind}")
    print(f"\nshipped weights ({len(weights)}; use the name with --weights):")
    for name, meta in weights.items():
        acc = meta.get("accuracy") or {}
        err = acc.get("top1_error")
        tta = acc.get("top1_error_tta")
        print(f"{name:<24} {meta.get('model', {}).get('name', '?'):<10} "
              + (f"{acc.get('split', '?')} error {err:.2f}%" if err is not None else "error not recorded")
              + (f", {tta:.2f}% with {acc.get('tta')}" if tta is not None else "")
              + (f"  ({meta['budget']} budget, seed {meta.get('seed')})" if meta.get("budget") else ""))
    return 0
