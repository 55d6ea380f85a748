"""Silencing a C library's own stderr chatter (llama.cpp's loader dump) while keeping it for errors.

The C code writes to file descriptor 2 directly, so Python-level redirection cannot catch it: the
descriptor is pointed at a temporary file for the duration, and its text is handed back so that a
failure can still show what the library said.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def captured_stderr(fd: int = 2) -> Iterator[list[str]]:
    """Capture file descriptor ``fd`` (2, stderr; 1 for libraries that print to stdout)."""
    out: list[str] = []
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", errors="replace"))
