"""Parsers for command-line values; each raises ``argparse.ArgumentTypeError`` with the value."""

from __future__ import annotations

import argparse
import re

__all__ = ["input_size", "positive_int"]


def input_size(text: str) -> tuple[int, int]:
    """``'256x192'`` -> ``(256, 192)`` (height x width)."""
    m = re.fullmatch(r"\s*([1-9][0-9]*)\s*[xX]\s*([1-9][0-9]*)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW with positive integers, "
                                         "e.g. 256x192")
    return int(m[1]), int(m[2])


def positive_int(text: str) -> int:
    """``'14'`` -> ``14``; zero, negatives and non-integers are refused."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value
