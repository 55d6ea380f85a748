"""Writing files so that a crash, Ctrl-C or a full disk never leaves a complete-looking one.

Data goes to a temporary name in the destination folder, is flushed and fsynced, and only then
renamed over the final path (atomic on POSIX and Windows).  On any failure the temporary file is
removed and the final path is left as it was.

Reading, too: every file a user or a stranger names goes through ``open_regular`` (regular files
only, opened without blocking), with its size bounded before reading (``read_text``, and
``runtime/tokenizer.py``'s ``read_small_bytes``), and JSON from others through ``loads_json``.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path

from edgellm.errors import BadInput, EdgeLLMError


def plain_name(name) -> bool:
    """A file name that names a file inside one folder: no folder part, not "." or "..", no
    NUL, not absolute, at most 255 characters (a name a stranger's file gives us)."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and not os.path.isabs(name) and len(name) <= 255)


def open_regular(path: Path):
    """``(binary file, its stat)`` for a regular file; a FIFO, a device or a folder is refused
    without blocking on it (opened non-blocking, checked on the open file, so a file swapped in
    after a check is the one refused).  BadInput naming the path."""

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read it ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{path}: not a regular file")
    return os.fdopen(fd, "rb"), st


MAX_TEXT_BYTES = 256 << 20          # --data, --calib-data: a text corpus, not a disk image
_CHUNK = 1 << 20


def read_text(path: Path, limit: int = MAX_TEXT_BYTES, upto: int | None = None) -> str:
    """A regular file's UTF-8 text (newlines translated, as ``Path.read_text`` does), streamed in
    chunks and checked as it is read.  A file larger
    than ``limit`` bytes is refused before anything is read.  ``upto``: read only the first that
    many bytes (cut at a character boundary), for a caller that uses only the start of the text
    (eval and calibration take their windows from the start).  BadInput naming the path."""

    f, st = open_regular(path)
    want = limit if upto is None else min(upto, limit)
    with f:
        if st.st_size > limit:
            raise BadInput(f"{path}: {st.st_size:,} bytes is more than the {limit:,} a text file may have "
                           "(give an excerpt)")
        dec, parts, n, at = codecs.getincrementaldecoder("utf-8")(), [], 0, 0
        lines = io.IncrementalNewlineDecoder(dec, translate=True)      # as open() in text mode
        try:
            while n <= want and (block := f.read(min(_CHUNK, want + 1 - n))):
                over = n + len(block) > want                # one byte past what is wanted
                if over and want == limit:
                    raise BadInput(f"{path}: grew past the {limit:,} bytes a text file may have while being read")
                at = n - len(dec.getstate()[0])             # the file offset of the decoder's input
                parts.append(lines.decode(block[:want - n]))
                n += len(block)
                if over:
                    return "".join(parts)                   # a character cut at the end is dropped
            at = n - len(dec.getstate()[0])
            parts.append(lines.decode(b"", final=True))     # a character cut off at the end of the file
        except UnicodeDecodeError as e:
            raise BadInput(f"{path}: not UTF-8 text ({e.reason} at byte {at + e.start:,})") from None
        except OSError as e:
            raise BadInput(f"{path}: unreadable ({e.strerror})") from None
    return "".join(parts)


def loads_json(data: bytes | str, where):
    """Strict JSON from someone else: NaN, Infinity and numbers out of a double's range (``1e999``)
    are refused, as are nesting too deep and integers too long to convert; BadInput naming
    ``where`` (plain ``json.loads`` returns NaN and inf, which then pass every ``<`` check)."""

    def constant(name):
        raise ValueError(f"{name} is not a JSON number")

    def number(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:40]} is out of range")
        return value

    try:
        return json.loads(data, parse_constant=constant, parse_float=number)
    except (ValueError, RecursionError) as e:
        raise BadInput(f"{where}: not valid JSON ({str(e)[:200] or type(e).__name__})") from None


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


MAX_CONFIG_BYTES = 16 << 20                    # tokenizer_config.json / generation_config.json


def read_small_bytes(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """A regular file's bytes, refused before reading when it is larger than ``limit`` or not a
    plain file.  Opened without blocking and checked on the open file, so a FIFO, a device such
    as /dev/zero, or a file swapped in after a check can neither hang the read nor run it on."""
    f, st = open_regular(path)
    with f:
        if st.st_size > limit:
            raise BadInput(f"{path}: {st.st_size:,} bytes is more than the {limit:,} a file of this kind may have")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise BadInput(f"{path}: unreadable ({e.strerror})") from None
    if len(data) > limit:
        raise BadInput(f"{path}: grew past the {limit:,} bytes a file of this kind may have while being read")
    return data


def read_small_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """A small regular file's UTF-8 text (see ``read_small_bytes``)."""
    try:
        return read_small_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json_object(path: Path, limit: int = MAX_CONFIG_BYTES) -> dict:
    """A small JSON object file, or {} when the file is absent."""
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        value = json.loads(read_small_text(path, limit))
    except (ValueError, RecursionError) as e:
        raise BadInput(f"{path}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(value, dict):
        raise BadInput(f"{path}: expected a JSON object")
    return value


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_PRIVATE_DIRS: list[str] = []


def private_dir(prefix: str) -> str:
    """A new temporary folder only we can read, removed when this process ends: at a normal exit
    (atexit) and where a supervised child ends through ``os._exit``, which skips atexit
    (``remove_private_dirs``, called there)."""
    import atexit

    d = tempfile.mkdtemp(prefix=prefix)
    if not _PRIVATE_DIRS:
        atexit.register(remove_private_dirs)
    _PRIVATE_DIRS.append(d)
    return d


def remove_private_dirs() -> None:
    """Remove the folders ``private_dir`` made in this process (each one ours by construction)."""
    import shutil

    while _PRIVATE_DIRS:
        shutil.rmtree(_PRIVATE_DIRS.pop(), ignore_errors=True)
