"""Errors a user can act on, each with its own exit code.

The CLI prints ``edgellm: error: <message>`` and exits with ``exit_code``; a traceback is shown
only with ``--debug``.  Library callers catch :class:`EdgeLLMError`.
"""

from __future__ import annotations


class EdgeLLMError(Exception):
    """Base class: a message meant for the user and the exit code the CLI returns."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(EdgeLLMError):
    """A file, flag or value the user gave is missing, malformed or unsupported."""

    exit_code = 2


class NothingFits(EdgeLLMError):
    """No candidate build meets the budgets; the message says what would."""

    exit_code = 3


class Unreachable(EdgeLLMError):
    """Something needed the network (a hub id) and could not get it."""

    exit_code = 4


class MachineBusy(EdgeLLMError):
    """Timings that cannot be trusted: another process used the CPU while we timed."""

    exit_code = 7


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled as Ctrl-C is (temporary files removed), with its own exit code."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.exit_code = 128 + signum


class EdgeLLMWarning(UserWarning):
    """Something the user should know that does not stop the work (a card ignored, a build that
    misses a budget).  The library warns (``warnings.warn``); the CLI prints it as one line,
    ``edgellm: warning: …``; a library caller decides for itself."""


EXIT_CRASHED = 6             # the runtime died in native code (the message names the file)
EXIT_INTERRUPTED = 130


def one_line(message, limit: int = 2000) -> str:
    """``message`` as one printable line: text from a stranger's file (a name, a template's error)
    may hold newlines or terminal escape sequences; they are shown escaped, and the line is bounded."""
    text = str(message)
    if len(text) > limit:
        text = text[:limit] + "…"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
