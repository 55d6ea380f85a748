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
def captured_stderr() -> Iterator[list[str]]:
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", errors="replace"))
