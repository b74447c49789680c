"""torch.hub entry points: one per model name in ``resnet.models.MODELS``, offline from a local clone.

    model = torch.hub.load("/path/to/clone", "resnet56", source="local")                       # random init
    model = torch.hub.load("/path/to/clone", "resnet56", source="local", weights="resnet56.th") # any importable file
    model = torch.hub.load("/path/to/clone", "resnet50", source="local", variant="v1.5", num_classes=10)

``weights`` is anything ``resnet.weights.importers.load_any`` accepts (a project .safetensors, a torchvision or
akamaster checkpoint, a run directory, a shipped name). A model loaded with weights carries ``model.normalization``
(apply it to uint8 (N, 3, H, W) images before calling the model) and ``model.classes``. Other keyword arguments
(``shortcut``, ``variant``, ``num_classes``, ``zero_init_residual``) go to ``resnet.build_model``.
"""

import os as _os
import sys as _sys

dependencies = ["torch"]

_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)  # works from a clone without pip install

from resnet.models import MODELS as _MODELS  # noqa: E402


def _entry(name):
    def entry(weights=None, **kwargs):
        from resnet.models import build_model, model_config
        from resnet.errors import UsageError

        if weights is None:
            return build_model(name, **kwargs)
        from resnet.weights.importers import load_any

        loaded = load_any(weights, name)
        cfg = loaded.model.config
        if kwargs:
            # Options must describe the loaded net; a mismatch would otherwise be silently ignored.
            wanted = model_config(name, **kwargs)
            for key in kwargs:
                if getattr(wanted, key) != getattr(cfg, key):
                    raise UsageError(f"{weights} has {key}={getattr(cfg, key)!r}, not {kwargs[key]!r}; drop {key}=")
        model = loaded.model
        model.normalization = loaded.normalization
        model.classes = loaded.classes
        return model

    cfg = _MODELS[name]
    kind = "plain net" if cfg.plain else f"ResNet, option {cfg.shortcut} shortcuts"
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name}: {cfg.depth}-layer {cfg.family} {kind}, {cfg.num_classes} classes.\n\n"
                     "weights: None (random He init), a weight file, a run directory or a shipped name.\n"
                     "Other keyword arguments (shortcut, variant, num_classes, zero_init_residual) go to build_model.")
    return entry


# torch.hub lists the public callables of this module, so each entry is a module-level function.
for _name in _MODELS:
    globals()[_name] = _entry(_name)
del _name
