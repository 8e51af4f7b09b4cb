"""Parsers for command-line values; each raises ``argparse.ArgumentTypeError`` with the value."""

from __future__ import annotations

import argparse
import re

__all__ = ["input_size"]


def input_size(text: str) -> tuple[int, int]:
    """``'256x192'`` -> ``(256, 192)`` (height x width)."""
    m = re.fullmatch(r"\s*([1-9][0-9]*)\s*[xX]\s*([1-9][0-9]*)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW with positive integers, "
                                         "e.g. 256x192")
    return int(m[1]), int(m[2])
