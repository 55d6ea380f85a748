"""Writing files so that a crash, Ctrl-C or a full disk never leaves a complete-looking one.

Data goes to a temporary name in the destination folder, is flushed and fsynced, and only then
renamed over the final path (atomic on POSIX and Windows).  On any failure the temporary file is
removed and the final path is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgellm.errors import EdgeLLMError


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
