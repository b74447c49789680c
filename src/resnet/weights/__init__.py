"""Weights on disk: the project's own format (safetensors + JSON metadata) and importers of other formats."""

from .format import Weights, load_weights, save_weights

__all__ = ["Weights", "load_weights", "save_weights"]
