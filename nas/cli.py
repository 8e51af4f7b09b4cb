"""The ``nas`` command line.

Each subcommand lives in ``nas.commands.<name>`` and exposes ``register(subparsers)``; its handler
returns a ``nas.commands.Result``: the text a person reads, the object ``--json`` prints and the
exit status. Every error a user can cause is one line ``nas: error: ...`` on stderr with exit
status 2, never a traceback: usage errors (argparse's) and ``NasError`` alike. Ctrl-C at any
moment, imports included, is one line and status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pkgutil
import sys

__all__ = ["main"]

USAGE_ERROR = 2
INTERRUPTED = 130  # as nas.commands.INTERRUPTED; not imported, to keep this module's import light


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line too (argparse prints the whole usage block first), with the
    prefix of every other error: ``nas: error: <message> (see nas <command> --help)``."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"nas: error: {message} (see {self.prog} --help)\n")


class _CommandParser(_Parser):
    """A subcommand's parser refuses arguments it does not know itself, so that the message
    points to its own help (argparse leaves them to the top-level parser: ``see nas --help``)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nas", description="Hardware-aware architecture search for efficient pose and "
        "segmentation heads.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_CommandParser)
    import nas.commands

    for info in sorted(pkgutil.iter_modules(nas.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"nas.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Everything, the imports of torch and of the commands included, runs inside this try: a
    # Ctrl-C in the first seconds is one line too, not a traceback.
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout went away (``nas ... | head``): nothing more to say; point
        # stdout at /dev/null so that the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    from supernets.errors import NasError

    parser = build_parser()
    args = parser.parse_args(argv)
    # under torchrun (nas.distributed) rank 0 speaks for the run; another rank only its errors
    rank = int(os.environ.get("RANK", "0") or 0)
    prefix = "nas" if rank == 0 else f"nas[rank {rank}]"
    finished = False
    try:
        if rank == 0:
            result = args.handler(args)
        else:   # rank 0 prints the run's messages; this rank its errors alone
            with contextlib.redirect_stderr(io.StringIO()):
                result = args.handler(args)
        finished = True
    except NasError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    finally:
        if "torch.distributed" in sys.modules:
            from nas.distributed import shutdown

            shutdown(clean=finished)
    if rank != 0:
        return result.status
    if getattr(args, "json", False):
        print(json.dumps(result.data, default=str))
    if result.status and result.error is None:
        print(f"nas: {result.text}", file=sys.stderr)
    elif not getattr(args, "json", False):
        print(result.text)
    if result.error:
        print(f"nas: error: {result.error}", file=sys.stderr)
    return result.status


if __name__ == "__main__":
    sys.exit(main())
