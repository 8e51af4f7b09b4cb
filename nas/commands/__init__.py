"""Subcommands of the ``nas`` CLI; each module exposes ``register(subparsers)``.

A handler takes the parsed arguments and returns a ``Result``: the text a person reads and the
object that ``--json`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Result:
    text: str
    data: dict = field(default_factory=dict)
