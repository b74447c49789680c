"""Argument types: numbers that have no meaning at zero, below zero or when not finite, and dataset names.

Given to argparse as ``type=``: a bad value is refused while parsing, in the one-line form of every usage error
(``resnet train: error: argument --iterations: ...``, exit status 2), before anything is loaded or trained.
"""

from __future__ import annotations

import argparse
import math

from ..data.sources import data_source
from ..errors import UsageError


def dataset(text: str) -> str:
    """A name of the data-source registry (``resnet.data.sources``)."""
    try:
        return data_source(text).name
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """An integer >= 1 (a budget, a size, a count)."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (where 0 means none: --warmup 0, --workers 0 for loading in the main process)."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (--epochs, --lr)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
