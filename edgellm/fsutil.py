"""Writing files so that a crash, Ctrl-C or a full disk never leaves a complete-looking one.

Data goes to a temporary name in the destination folder, is flushed and fsynced, and only then
renamed over the final path (atomic on POSIX and Windows).  On any failure the temporary file is
removed and the final path is left as it was.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from edgellm.errors import EdgeLLMError


def plain_name(name) -> bool:
    """A file name that names a file inside one folder: no folder part, not "." or "..", no
    NUL, not absolute, at most 255 characters (a name a stranger's file gives us)."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and not os.path.isabs(name) and len(name) <= 255)


def open_regular(path: Path):
    """``(binary file, its stat)`` for a regular file; a FIFO, a device or a folder is refused
    without blocking on it (opened non-blocking, checked on the open file, so a file swapped in
    after a check is the one refused).  BadInput naming the path."""
    from edgellm.errors import BadInput

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise BadInput(f"{path}: cannot read it ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{path}: not a regular file")
    return os.fdopen(fd, "rb"), st


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once or not at all, with the mode a plain open() gives."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise EdgeLLMError(f"cannot write {path}: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())         # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise EdgeLLMError(f"cannot write {path}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
