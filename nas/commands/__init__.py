"""Subcommands of the ``nas`` CLI; each module exposes ``register(subparsers)``.

A handler takes the parsed arguments and returns a ``Result``: the text a person reads, the
object that ``--json`` prints and the exit status. A run stopped by Ctrl-C returns status
``INTERRUPTED``: its text (how to resume) goes to stderr, and ``--json`` still prints its object.
A command that ran but whose verdict is a failure (a table that does not fit the machine, a
network over its budget) returns its own non-zero status with ``error``: its text is printed as
usual and ``error`` as one ``nas: error: ...`` line on stderr.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT (128 + 2)


@dataclass
class Result:
    text: str
    data: dict = field(default_factory=dict)
    status: int = 0
    error: str | None = None    # a failed verdict: the one line printed as "nas: error: ..."


def given_flags(args, names) -> list[str]:
    """The flags among ``names`` (dests) given on the command line: their defaults must be None
    (store_true flags: False), so that a value equal to the default still counts as given."""
    return ["--" + name.replace("_", "-") for name in names
            if getattr(args, name) is not None and getattr(args, name) is not False]
