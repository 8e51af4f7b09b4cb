"""Checks of config fields for the config dataclasses (``SearchConfig``, ``TrainConfig``).

The command line refuses the same values earlier (``nas.argtypes``); these make the Python API
refuse them too, with a NasError naming the field (as its flag) and what was expected, instead
of a ZeroDivisionError or NaN probabilities seconds into a run.
"""

from __future__ import annotations

import math

from supernets.errors import NasError

__all__ = ["check_float", "check_int"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(name: str, value, *, minimum: int = 1, optional: bool = False) -> None:
    """``value`` is an int of at least ``minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        expected = {0: "an integer, 0 or more", 1: "a positive integer"}.get(
            minimum, f"an integer of at least {minimum}")
        raise NasError(f"{_flag(name)} {value!r}: expected {expected}")


def check_float(name: str, value, *, positive: bool = False, non_negative: bool = False,
                below: float | None = None, not_one: bool = False) -> None:
    """``value`` is a finite number, with the given bounds."""
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and positive:
        ok = value > 0
    if ok and non_negative:
        ok = value >= 0
    if ok and below is not None:
        ok = value < below
    if ok and not_one:
        ok = value != 1
    if not ok:
        expected = ("a positive, finite number" if positive
                    else "a finite number, 0 or more" if non_negative else "a finite number")
        if below is not None:
            expected += f" below {below:g}"
        if not_one:
            expected += " other than 1"
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise NasError(f"{_flag(name)} {shown}: expected {expected}")
