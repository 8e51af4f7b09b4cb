"""Subcommands of the ``nas`` CLI; each module exposes ``register(subparsers)``.

A handler takes the parsed arguments and returns a ``Result``: the text a person reads, the
object that ``--json`` prints and the exit status (non-zero when the command ran but its verdict
is a failure: a table that does not fit the machine, a network over its budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Result:
    text: str
    data: dict = field(default_factory=dict)
    code: int = 0               # exit status: 0, or a command's own "ran, but failed" status
    error: str | None = None    # with a non-zero code: the one line printed as "nas: error: ..."
