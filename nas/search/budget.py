"""Latency budgets as the user types them: ``3ms``, ``800us``, ``0.004s``."""

from __future__ import annotations

import math
import re

from supernets.errors import NasError

__all__ = ["format_ms", "parse_budget", "parse_budgets"]

_UNITS_MS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
_BUDGET = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs)\s*")


def parse_budget(text: str) -> float:
    """A time with a unit -> milliseconds; NasError naming the value otherwise."""
    m = _BUDGET.fullmatch(text)
    if not m:
        raise NasError(f"--budget {text!r}: expected a positive time with a unit (s, ms, us), "
                       "e.g. 3ms, 800us, 0.004s")
    value = float(m[1]) * _UNITS_MS[m[2]]
    if not math.isfinite(value) or value <= 0:
        raise NasError(f"--budget {text!r}: must be a positive time")
    return value


def parse_budgets(text: str) -> list[float]:
    """A comma-separated list of budgets (``2ms,3ms,5ms``) -> milliseconds, in order given;
    NasError naming the malformed entry."""
    parts = text.split(",")
    out = []
    for i, part in enumerate(parts, 1):
        if not part.strip():
            raise NasError(f"--budget {text!r}: entry {i} is empty; expected e.g. 2ms,3ms,5ms")
        try:
            out.append(parse_budget(part))
        except NasError:
            raise NasError(f"--budget {text!r}: entry {i} ({part.strip()!r}) is not a positive "
                           "time with a unit (s, ms, us)") from None
    return out


def format_ms(ms: float) -> str:
    return f"{ms * 1e3:.0f}us" if ms < 1 else f"{ms:.2f}ms"
