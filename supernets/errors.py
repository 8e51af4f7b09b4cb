"""The one exception type a user sees as a one-line message (``nas: error: ...``)."""


class NasError(Exception):
    """Bad input or an unmet precondition, phrased for the user.

    The message names the file, field or value and what was expected. The CLI prints it on one
    line and exits non-zero; it never shows a traceback for these.
    """
