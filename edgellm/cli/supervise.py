"""Running a bundle in a supervised child process, so that a crash in native code is one line.

llama.cpp stops the process on a failed assertion (``GGML_ASSERT``: abort, exit 134, nothing a
caller can catch), and a model file truncated on disk while it is mapped kills the process with
SIGBUS.  edgellm's checks refuse every such file it knows of before a runtime sees it, but on a
phone or a board "the process vanished" is all a user would see of one it does not know.  So
``run`` and ``profile`` fork: the child does the work with its stdout straight to the user; its
stderr comes through the parent, which passes edgellm's own lines on at once and holds the
native library's chatter back.  When the child dies from a signal, the parent prints one line
naming the bundle, the signal and what the library said last (its assertion or exception text),
and exits with ``EXIT_CRASHED``.

Signals: the terminal sends Ctrl-C to both processes, so the parent ignores SIGINT and lets the
child stop cleanly; SIGTERM and SIGHUP sent to the parent are passed to the child.  The child
is killed with the parent (``PR_SET_PDEATHSIG`` on Linux).  Where there is no ``fork`` (Windows)
the command runs in-process.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Callable

from edgellm.core.files import remove_private_dirs
from edgellm.errors import EXIT_CRASHED

MAX_HELD = 5000               # lines of other output kept (shown after a run that ended normally)
MAX_LINE = 4000
WHY = {
    signal.SIGABRT: "it aborted",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error: a model file was truncated or changed on disk while in use",
    signal.SIGFPE: "arithmetic fault",
    signal.SIGILL: "illegal instruction: this build of the runtime needs CPU features this machine lacks",
}
_NATIVE_SAYS = re.compile(r"GGML_ASSERT|GGML_ABORT|what\(\)|error|failed|terminate called", re.I)


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)            # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _native_message(held: list[str]) -> str:
    """The library's last words: its assertion (build path cut to the source file), or its
    uncaught exception as "type: what"."""
    lines = [ln.strip() for ln in held[-40:] if ln.strip()]
    said = [ln for ln in lines if _NATIVE_SAYS.search(ln)]
    text = (said or lines or [""])[-1]
    if text.startswith("what():"):
        thrown = next((m[1] for ln in reversed(lines) if (m := re.search(r"instance of '([^']+)'", ln))), None)
        text = f"{thrown + ': ' if thrown else ''}{text[len('what():'):].strip()}"
    text = re.sub(r"^\S*/(?:vendor/)?llama\.cpp/", "", text)
    return text[:300]


def supervised(work: Callable[[], int], what: str, show_all: bool = False) -> int:
    """Run ``work()`` (which returns an exit code) in a child; ``what`` names the file for a crash.
    ``show_all`` (--debug): pass on the native libraries' output too, once the child has ended."""
    if not hasattr(os, "fork") or os.environ.get("EDGELLM_IN_PROCESS"):
        return work()
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the child: do the work
        code = 1
        try:
            os.close(r)
            os.dup2(w, 2)
            os.close(w)
            _die_with_parent()
            os.environ["GGML_NO_BACKTRACE"] = "1"            # ggml would run gdb for a backtrace
            os.environ["EDGELLM_SUPERVISED"] = "1"
            code = work()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                remove_private_dirs()                       # os._exit skips atexit
            finally:
                os._exit(code)
    os.close(w)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: os.kill(pid, s))
    held: list[str] = []
    with os.fdopen(r, "r", encoding="utf-8", errors="replace") as pipe:
        for line in pipe:
            if line.startswith("edgellm:"):
                sys.stderr.write(line)
                sys.stderr.flush()
            elif len(held) < MAX_HELD:
                held.append(line[:MAX_LINE])
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            name = signal.Signals(sig).name
            hint = " (out of memory? the system kills what it cannot fit)" if sig == signal.SIGKILL else ""
            print(f"edgellm: error: {what}: the runtime was stopped by {name}{hint}", file=sys.stderr)
            return 128 + sig
        why = WHY.get(sig, signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}")
        said = _native_message(held)
        print(f"edgellm: error: {what}: the runtime crashed ({why})" + (f"; it said: {said}" if said else ""),
              file=sys.stderr)
        return EXIT_CRASHED
    if show_all:                            # native chatter, warnings, --debug tracebacks
        sys.stderr.writelines(held)
        sys.stderr.flush()
    return os.WEXITSTATUS(status)
