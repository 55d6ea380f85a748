"""Claiming an output folder before anything is written to it.

- **One writer.**  A lock (``.NAME.lock`` beside the output, held with ``flock`` for the whole
  run and released by the kernel when the process dies) makes a second export to the same
  folder fail at once, naming the first one's process.
- **Only ours is replaced.**  With ``--force`` an existing output is replaced only when it is
  recognisably edgellm's (a bundle's ``manifest.json``, a student's ``edgellm-distill.json``);
  anything else (a model folder, a folder of documents, a link) is refused, naming the path.
- **No litter.**  Temporary folders are named ``.NAME.partial-PID`` (and ``.old-PID``,
  ``.trial-PID-N``); a run that was killed (SIGKILL, power loss) leaves them, so the next run
  for the same output removes those whose process is gone.
- **Disk space.**  Free space is checked against the predicted size before starting, and a
  write that runs out says so with the numbers.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from edgellm.errors import BadInput, EdgeLLMError
from edgellm.units import fmt_bytes

TEMP_KINDS = ("partial", "old", "trial")
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old|trial)-(?P<pid>\d+)(-\d+)?$")
DISK_MARGIN = 1.05             # predicted sizes are estimates
DISK_SLACK = 1 << 20           # tokenizer files, the manifest, filesystem overhead


class OutputBusy(EdgeLLMError):
    """Another process holds the output's lock."""


def temp_name(out: Path, kind: str, suffix: str = "") -> Path:
    assert kind in TEMP_KINDS
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}{suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's process: alive
        return True
    return True


def _temp_of(name: str) -> tuple[str | None, list[int]]:
    """(the output name, the PIDs) of a temporary name, which may nest (a quality-gate trial's
    own partial folder: ``..NAME.trial-PID-N.partial-PID``); (None, []) for other names."""
    pids = []
    m = _TEMP.match(name)
    while m:
        pids.append(int(m["pid"]))
        name = m["name"]
        m = _TEMP.match(name)
    return (name, pids) if pids else (None, [])


def remove_stale(out: Path) -> list[Path]:
    """Remove temporary folders of ``out`` left by edgellm runs whose process is gone."""
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        lock = p.name.startswith(".") and p.name.endswith(".lock")
        base, pids = _temp_of(p.name[1:-5] if lock else p.name)
        if base != out.name or any(_pid_alive(pid) for pid in pids):
            continue
        if lock and p.is_file() and not p.is_symlink():       # a killed quality-gate trial's lock
            p.unlink(missing_ok=True)
            removed.append(p)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def mount_point(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def no_space(where: Path, needed: int | None, free: int) -> EdgeLLMError:
    need = f"needs about {fmt_bytes(needed)}" if needed else "needs more"
    return EdgeLLMError(f"no space left on {mount_point(where)}: {need}, has {fmt_bytes(free)} "
                        f"(writing {where}); free some space or choose another -o")


def check_space(folder: Path, needed: int | None) -> int:
    """Free bytes in ``folder``'s filesystem; refuses up front when ``needed`` does not fit."""
    free = free_bytes(folder)
    if needed and needed * DISK_MARGIN + DISK_SLACK > free:
        raise no_space(folder, int(needed * DISK_MARGIN + DISK_SLACK), free)
    return free


class _Lock:
    def __init__(self, out: Path):
        self.path = out.with_name(f".{out.name}.lock")
        self.fd = -1

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                raise EdgeLLMError(f"cannot write to {self.path.parent}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                out = self.path.with_name(self.path.name[1:-5])
                raise OutputBusy(f"{out}: another edgellm process (PID {holder}) is writing it; "
                                 "wait for it to finish or choose another -o") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:                   # not unlinked by a finishing holder between open and flock
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return
            os.close(fd)
        raise OutputBusy(f"{self.path}: the output's lock keeps changing hands; try again")

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


@contextmanager
def claimed(out: Path, force: bool, recognise: Callable[[Path], bool], kind: str = "bundle") -> Iterator[None]:
    """Hold ``out`` for this run: locked, checked replaceable (``recognise``: whether an existing
    folder there is one of ours), stale temporaries of it removed."""
    out = Path(out)
    if out.is_symlink():
        raise BadInput(f"{out}: is a link; edgellm writes a real folder there, so give another -o")
    if out.exists() and not force:
        raise BadInput(f"{out}: already exists; pass --force to replace it")
    if out.exists() and not (out.is_dir() and recognise(out)):
        raise BadInput(f"{out}: exists and is not an edgellm {kind}; refusing to replace it, even with --force")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeLLMError(f"cannot create {out.parent}: {e.strerror}") from None
    lock = _Lock(out)
    lock.acquire()
    try:
        remove_stale(out)
        yield
    finally:
        lock.release()


def write_error(e: BaseException, out: Path, needed: int | None, free_before: int) -> EdgeLLMError | None:
    """The one line for a failed write: out of space (by errno, or by a filesystem left nearly
    full, since some writers report only short writes) or another OS error; None for other errors."""
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    short_write = isinstance(e, OSError) and e.errno is None and _nearly_full(out.parent)
    said = isinstance(e, EdgeLLMError) and "No space left" in e.message
    if full or short_write or said:
        return no_space(out, needed, free_before)
    if isinstance(e, OSError) and not isinstance(e, EdgeLLMError):
        what = e.strerror or str(e)
        return EdgeLLMError(f"export failed writing {out}: {what}")
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        return free_bytes(folder) < 1 << 20
    except OSError:
        return False
