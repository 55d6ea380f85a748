"""One-line stage progress on stderr: rewritten in place on a terminal, one line per stage when
stderr is a file or pipe (so logs stay readable)."""

from __future__ import annotations

import sys


class StageLine:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr         # the stderr of now, not of import time
        self.tty = self.stream.isatty()
        self.last_stage = None

    def __call__(self, msg) -> None:
        msg = str(msg)                     # a line, or the stages' Progress event
        stage = msg.split(":")[0]
        if self.tty:
            self.stream.write("\r\033[2K" + msg[:200])
            self.stream.flush()
        elif stage != self.last_stage:
            self.stream.write(msg + "\n")
            self.stream.flush()
        self.last_stage = stage

    def note(self, msg: str) -> None:
        """A line that stays (on a terminal too): what the run will need, a warning."""
        if self.tty:
            self.stream.write("\r\033[2K")
        self.stream.write(msg + "\n")
        self.stream.flush()
        self.last_stage = None

    def done(self) -> None:
        if self.tty and self.last_stage is not None:
            self.stream.write("\n")
            self.stream.flush()


def stderr_progress(msg: str) -> None:
    """A progress line of a command that measures (``device measure``, remote runs)."""
    print(f"edgellm: {msg}", file=sys.stderr, flush=True)
