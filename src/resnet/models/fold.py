"""BN folded into the convolution before it: for inference only, where BN's running statistics are constants, each
``BN(conv(x))`` is one convolution with rescaled weights and a bias (fewer passes over memory; 1.2-1.35x on CPU,
docs/speed.md)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch.fx.experimental.optimization import fuse


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with every conv -> BN pair folded into one convolution (torch.fx), using the
    BN running statistics; ``model`` itself is left unchanged (mode included). A model that cannot be traced is
    copied unfused, with a warning."""
    was_training = model.training
    model.eval()
    try:
        return fuse(model, inplace=False).eval()
    except Exception as e:  # noqa: BLE001 - an untraceable model still runs, unfused
        warnings.warn(f"could not fold BN into the convolutions ({type(e).__name__}); running unfused",
                      RuntimeWarning, stacklevel=2)
        return copy.deepcopy(model).eval()
    finally:
        model.train(was_training)
