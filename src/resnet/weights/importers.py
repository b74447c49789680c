"""Weights from wherever they come from, as one :class:`~resnet.weights.Weights`: ``load_any(source, model=None)``.

``source`` may be
- the project's own format: ``X.safetensors`` + ``X.json`` (or ``X``, or ``X.json``), or a run directory holding
  ``best.safetensors`` / ``last.safetensors`` (best preferred);
- a torchvision ResNet state dict (``torch.save(model.state_dict())``, resnet18..152): option B, bottlenecks ``v1.5``;
- an akamaster/pytorch_resnet_cifar10 checkpoint ``{'best_prec1', 'state_dict'}`` (``module.`` prefix, ``linear``
  head): the CIFAR nets with option A shortcuts, whose zero padding our ``ZeroPadShortcut`` reproduces exactly;
- the name of weights shipped with the package (``resnet20-cifar10``; see :mod:`resnet.weights.pretrained`).

The format is told from the file's content, not its extension. Pickle-based files are opened only with
``torch.load(..., weights_only=True)``: a file holding anything but tensors and plain containers is refused before any
of it runs. The architecture of a state dict is read from its keys and tensor shapes (depth from the number of blocks,
classes from ``fc``); ``model=`` checks it is the net the caller expects.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..data.cifar import CIFAR10_CLASSES  # CIFAR-10's label order 0..9
from ..data.imagefolder import imagenet_class_names
from ..data.normalize import Normalization
from ..errors import UsageError, choices
from ..models import MODELS, ModelConfig, ResNet
from .format import Weights, load_weights, weight_paths
from .pretrained import looks_like_name, pretrained_path

RUN_DIR_FILES = ("best.safetensors", "last.safetensors")


# ---------------------------------------------------------------------------------------------------------------------
# Reading files


def detect_format(path: str | os.PathLike) -> str:
    """``"safetensors"``, ``"json"`` (a project metadata file) or ``"torch"`` (anything else: torch.load decides)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9:
        # safetensors: little-endian u64 header length, then the JSON header.
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 8 + n <= size:
            return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "torch"


def _is_pickle(path: str | os.PathLike) -> bool:
    """Whether the file parses as a pickle stream; only reads opcodes, runs nothing."""
    try:
        with open(path, "rb") as f:
            for op, _, _ in pickletools.genops(f):
                if op.name == "STOP":
                    return True
    except Exception:
        return False
    return False


def safe_torch_load(path: str | os.PathLike):
    """``torch.load`` restricted to tensors and plain containers; anything else is a one-line :class:`UsageError`."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        lines = [line.strip() for line in msg.splitlines()[1:]
                 if line.strip() and "file an issue" not in line and not line.startswith("Check the documentation")]
        reason = (lines[0] if lines else msg.splitlines()[0])[:160]
        if "global" in msg.lower() or _is_pickle(path):
            raise UsageError(
                f"refusing to load {path}: it contains code/objects, not only tensors ({reason}); if you trust it, "
                "re-save just its tensors with torch.save(model.state_dict(), ...)") from None
        raise UsageError(f"{path} is not a weight file (neither safetensors nor a PyTorch checkpoint); give a "
                         ".safetensors, .pth or .th file") from None
    except RuntimeError as e:
        msg = str(e)
        if "TorchScript" in msg:
            raise UsageError(f"{path} is a TorchScript archive, which cannot be imported; give the weights it was "
                             "exported from") from None
        raise UsageError(f"{path} is not a readable PyTorch checkpoint ({msg.splitlines()[0][:160]})") from None
    except Exception as e:  # the weights-only unpickler also raises KeyError, EOFError, ... on foreign bytes
        if not zipfile.is_zipfile(path) and not _is_pickle(path):
            raise UsageError(f"{path} is not a weight file (neither safetensors nor a PyTorch checkpoint); give a "
                             ".safetensors, .pth or .th file") from None
        raise UsageError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:120]}); "
                         "it may be truncated") from None


def _load_project(path: Path, model: str | None) -> Weights:
    weights = load_weights(path)
    name = weights.model.config.name
    if model is not None and model != name:
        raise UsageError(f"{path} holds {name}, not the requested {model} (--model); use {name} or drop --model")
    return weights


def _run_dir_file(path: Path) -> Path:
    for name in RUN_DIR_FILES:
        if (path / name).exists():
            return path / name
    raise UsageError(f"{path} is a directory without {' or '.join(RUN_DIR_FILES)}; give a run directory that has saved "
                     "a checkpoint, or a weight file")


def load_any(source: str | os.PathLike, model: str | None = None) -> Weights:
    """Weights from a file, a run directory or a shipped name, in eval mode on the CPU.

    ``model`` (a name from :data:`resnet.models.MODELS`) makes a checkpoint of any other network an error; for a state
    dict whose option-A shortcuts hold no parameters, ``model="plainN"`` loads it as the plain net.
    """
    if model is not None and model not in MODELS:
        raise UsageError(f"unknown model {model!r}; choose one of: {choices(MODELS)}")
    source = os.fspath(source)
    path = Path(source)
    if path.is_dir():
        return _load_project(_run_dir_file(path), model)
    if not path.exists():
        st_path = weight_paths(path)[0]
        if st_path.exists() and path.suffix in ("", ".json"):
            return _load_project(st_path, model)
        if looks_like_name(source) and os.sep not in source:
            return _load_project(pretrained_path(source), model)
        raise UsageError(f"no such file: {source}; give a weight file, a run directory or a shipped name")
    kind = detect_format(path)
    if kind == "json":
        return _load_project(path, model)
    if kind == "safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            if "input.mean" in keys and any(k.startswith("model.") for k in keys):
                return _load_project(path, model)
            state = load_file(str(path))
        except UsageError:
            raise
        except Exception as e:  # safetensors' own error types for truncated or corrupt files
            raise UsageError(f"{path} is not a readable safetensors file ({str(e)[:120]}); re-download or re-export it") from None
        return from_state_dict(state, model, origin=str(path))
    if path.suffix.lower() == ".onnx":
        raise UsageError(f"{path} is an ONNX file, which cannot be imported; give the weights it was exported from")
    return from_checkpoint(safe_torch_load(path), model, origin=str(path))


# ---------------------------------------------------------------------------------------------------------------------
# State dicts: torchvision, akamaster, or our own modules saved with torch.save


def from_checkpoint(obj, model: str | None = None, origin: str = "checkpoint") -> Weights:
    """A loaded ``torch.save`` object: a bare state dict, or a dict wrapping one (``state_dict``/``model_state_dict``)."""
    if not isinstance(obj, dict):
        raise UsageError(f"{origin} holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    extra = {}
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            extra = {k: v for k, v in obj.items() if k != key and isinstance(v, (int, float, str))}
            obj = obj[key]
            break
    return from_state_dict(obj, model, origin=origin, extra=extra)


def _rename(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DataParallel, torch.compile
        while key.startswith(prefix):
            key = key[len(prefix):]
    if key.startswith("linear."):  # akamaster's head
        key = "fc." + key[len("linear."):]
    return key.replace(".shortcut.", ".downsample.")  # akamaster's option-B projection, same Sequential(conv, bn)


def infer_config(state: dict[str, torch.Tensor], origin: str = "state dict") -> ModelConfig:
    """The network a ResNet state dict (our/torchvision key names) belongs to, from its keys and shapes."""
    conv1, fc = state.get("conv1.weight"), state.get("fc.weight")
    if conv1 is None or fc is None or conv1.ndim != 4 or fc.ndim != 2:
        sample = ", ".join(list(state)[:4])
        raise UsageError(f"{origin} is not a ResNet state dict (no conv1/fc weights; keys start {sample}); give a "
                         "torchvision, akamaster or resnet weight file")
    families = {7: "imagenet", 3: "cifar"}
    if conv1.shape[-1] not in families:
        raise UsageError(f"{origin} has a {conv1.shape[-1]}x{conv1.shape[-1]} first convolution; only ImageNet (7x7) "
                         "and CIFAR (3x3) ResNets can be imported")
    family = families[conv1.shape[-1]]
    blocks: dict[int, set[int]] = {}
    projections: set[tuple[int, int]] = set()
    for key in state:
        m = re.match(r"layer(\d+)\.(\d+)\.(\w+)", key)
        if m:
            stage, index = int(m[1]), int(m[2])
            blocks.setdefault(stage, set()).add(index)
            if m[3] == "downsample":
                projections.add((stage, index))
    expected_stages = 4 if family == "imagenet" else 3
    if sorted(blocks) != list(range(1, expected_stages + 1)) or any(s != set(range(len(s))) for s in blocks.values()):
        raise UsageError(f"{origin} has stages {sorted(blocks)}; a {family} ResNet has layer1..layer{expected_stages} "
                         "with consecutive blocks")
    stage_blocks = tuple(len(blocks[s]) for s in sorted(blocks))
    block = "bottleneck" if any(k.endswith(".conv3.weight") for k in state) else "basic"
    if not projections:
        shortcut = "A"  # parameter-free; identical in weights to the plain net, which model="plainN" selects
    elif len(projections) == sum(stage_blocks):
        shortcut = "C"
    else:
        shortcut = "B"
    depth = (3 if block == "bottleneck" else 2) * sum(stage_blocks) + 2
    # torchvision strides the bottleneck's 3x3 (v1.5); its state dict cannot tell, so the convention decides.
    variant = "v1.5" if block == "bottleneck" else "v1"
    return ModelConfig(f"resnet{depth}", family, block, stage_blocks, int(fc.shape[0]), shortcut, variant)


def _describe(cfg: ModelConfig) -> str:
    return f"{cfg.name} ({cfg.family}, {cfg.block} blocks {'-'.join(map(str, cfg.stage_blocks))})"


def _reconcile(cfg: ModelConfig, model: str | None, origin: str) -> ModelConfig:
    if model is None:
        return cfg
    want = MODELS[model]
    if (want.family, want.block, want.stage_blocks) != (cfg.family, cfg.block, cfg.stage_blocks):
        raise UsageError(f"{origin} holds {_describe(cfg)}, not the requested {model} (--model); use "
                         f"{cfg.name} or drop --model")
    if want.plain:
        if cfg.shortcut != "A":
            raise UsageError(f"{origin} holds {cfg.name} with projection shortcuts (option {cfg.shortcut}), not the "
                             f"plain {model} (--model); use {cfg.name} or drop --model")
        return replace(cfg, name=model, shortcut=None)
    return cfg


def from_state_dict(state: dict, model: str | None = None, origin: str = "state dict", extra: dict | None = None) -> Weights:
    """Weights from a ResNet state dict in torchvision's or akamaster's naming (``module.`` prefixes allowed)."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UsageError(f"{origin} is not a state dict of tensors ({bad[0]!r} is a {type(state[bad[0]]).__name__})")
    akamaster = "best_prec1" in (extra or {}) or any(re.match(r"(module\.)*linear\.", k) for k in state)
    state = {_rename(k): v for k, v in state.items()}
    cfg = _reconcile(infer_config(state, origin), model, origin)
    net = ResNet(cfg)
    expected = net.state_dict()
    for key, value in expected.items():  # old checkpoints (akamaster) predate BN's step counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise UsageError(f"{origin} does not fit {_describe(cfg)}: {'; '.join(parts)}")
    net.load_state_dict(state)
    if akamaster:
        fmt = "akamaster"
    elif cfg.family == "imagenet":
        fmt = "torchvision"
    else:
        fmt = "state_dict"
    meta = {"source": {"format": fmt, "path": origin, **(extra or {})}}
    # The data set is implied by the head: what `resnet eval` evaluates on unless told otherwise.
    if cfg.family == "cifar" and cfg.num_classes == 10:
        meta.update(classes=list(CIFAR10_CLASSES), data="cifar10")
    elif cfg.family == "imagenet" and cfg.num_classes == 1000:
        meta.update(classes=imagenet_class_names(), data="imagenet")
    # Both torchvision and akamaster scale to [0, 1] and normalise with ImageNet's per-channel mean/std.
    return Weights(net.eval(), Normalization.per_channel(), meta)


def describe(weights: Weights) -> str:
    """One line: the network and where its weights came from."""
    src = weights.meta.get("source")
    origin = f" from {src['format']} {src.get('path', '')}".rstrip() if isinstance(src, dict) else ""
    return f"{_describe(weights.model.config)}, {weights.normalization.kind} input normalisation{origin}"


__all__ = ["load_any", "from_checkpoint", "from_state_dict", "infer_config", "safe_torch_load", "detect_format",
           "describe", "CIFAR10_CLASSES"]
