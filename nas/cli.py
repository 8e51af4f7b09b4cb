"""The ``nas`` command line.

Each subcommand lives in ``nas.commands.<name>`` and exposes ``register(subparsers)``; its handler
returns a ``nas.commands.Result``: the text a person reads and the object ``--json`` prints. User errors are
``NasError``: one line on stderr, exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from supernets.errors import NasError

__all__ = ["main"]

class _Parser(argparse.ArgumentParser):
    """Usage errors on one line too (argparse prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nas", description="Hardware-aware architecture search for efficient pose heads.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    import nas.commands

    for info in sorted(pkgutil.iter_modules(nas.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"nas.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except NasError as e:
        print(f"nas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(result.data, default=str))
    else:
        print(result.text)
    if result.error:
        print(f"nas: error: {result.error}", file=sys.stderr)
    return result.code


if __name__ == "__main__":
    sys.exit(main())
