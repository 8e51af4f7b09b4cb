"""Differentiable, latency-budgeted architecture search."""

from nas.search.budget import format_ms, parse_budget
from nas.search.derive import Derivation, derive
from nas.search.relax import MODES, ArchParameters
from nas.search.run import prepare, search
from nas.search.searcher import SearchConfig, Searcher

__all__ = ["MODES", "ArchParameters", "Derivation", "SearchConfig", "Searcher", "derive",
           "format_ms", "parse_budget", "prepare", "search"]
