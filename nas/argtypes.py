"""Parsers for command-line values; each raises ``argparse.ArgumentTypeError`` with the value.

They refuse what the config dataclasses (``SearchConfig``, ``TrainConfig``) refuse too, so bad
input stops at the command line with argparse's message, and in Python with a ``NasError``.
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["finite_float", "input_size", "log_base", "non_negative_int", "positive_float",
           "positive_int", "seed_list"]


def input_size(text: str) -> tuple[int, int]:
    """``'256x192'`` -> ``(256, 192)`` (height x width)."""
    m = re.fullmatch(r"\s*([1-9][0-9]*)\s*[xX]\s*([1-9][0-9]*)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW with positive integers, "
                                         "e.g. 256x192")
    return int(m[1]), int(m[2])


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def positive_int(text: str) -> int:
    """``'14'`` -> ``14``; zero, negatives and non-integers are refused."""
    value = _int(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """``'0'`` -> ``0``; negatives and non-integers are refused."""
    value = _int(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer, 0 or more")
    return value


def seed_list(text: str) -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]``; an empty list, negatives and non-integers are refused."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers such as 0,1,2") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are >= 0")
    return values


def _float(text: str) -> float:
    """The number, or nan for anything that is not one (refused by the callers)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def finite_float(text: str) -> float:
    """``'-0.5'`` -> ``-0.5``; nan, inf and non-numbers are refused."""
    value = _float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
    return value


def positive_float(text: str) -> float:
    """``'1e-3'`` -> ``0.001``; zero, negatives, nan and inf are refused."""
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive, finite number")
    return value


def log_base(text: str) -> float:
    """A logarithm's base: positive, finite and not 1 (``log(1)`` is 0: a division by zero)."""
    value = positive_float(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number other than 1")
    return value
