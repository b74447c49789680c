"""The paper's networks: ``build_model(name, ...)``, the registry ``MODELS``, and counting helpers."""

from .blocks import BasicBlock, Bottleneck, ZeroPadShortcut, make_shortcut, SHORTCUT_OPTIONS
from .resnet import MODELS, VARIANTS, ModelConfig, ResNet, build_model, model_config, model_label, model_names
from .summary import count_macs, count_params, summarize, format_summary

__all__ = [
    "BasicBlock", "Bottleneck", "ZeroPadShortcut", "make_shortcut", "SHORTCUT_OPTIONS",
    "MODELS", "VARIANTS", "ModelConfig", "ResNet", "build_model", "model_config", "model_label", "model_names",
    "count_macs", "count_params", "summarize", "format_summary",
]
