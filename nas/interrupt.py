"""Ctrl-C as a request: long jobs stop at the next step boundary and write a checkpoint."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

from tqdm import tqdm

__all__ = ["stop_on_sigint"]


@contextlib.contextmanager
def stop_on_sigint(request_stop: Callable[[], None]) -> Iterator[None]:
    """While inside, the first Ctrl-C calls ``request_stop``; a second one aborts at once."""
    requested = False

    def on_sigint(signum, frame):
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        request_stop()
        tqdm.write("nas: stopping after this step and saving a checkpoint "
                   "(Ctrl-C again to abort now)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
