"""Is anything else using the CPU while we time it?

A timing taken while another process runs is wrong, and silently so: llama.cpp's threads spin
while they wait for each other, and one busy core slows a 2-thread decode tenfold.  Two signals:

- **others' CPU time**: on Linux, the whole machine's busy time (``/proc/stat``) less this
  process's own (``os.times``), over the timed span, in cores;
- **spread**: how far apart the repeats of one timing are (a quiet machine repeats within a few
  percent).

Elsewhere only the spread and the load average before the start are available.  Standard
library only: this runs on the device.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from edgellm.errors import MachineBusy

T = TypeVar("T")

STAT = Path("/proc/stat")
MAX_OTHERS = 0.25            # cores other processes may use while we time
# (slowest - fastest) / fastest over one timing's repeats.  Only gross disturbances: on a quiet
# 2-core cloud VM (AMD EPYC) repeats of one llama.cpp timing differed by up to 30% (the host's other
# tenants share its caches and memory; nothing in the VM shows it), so a tighter bound refuses
# there for ever.  A process running beside us is caught by its CPU time instead.
MAX_SPREAD = 0.5
TRIES = 3                    # a measurement disturbed by another process is taken again, up to this often


def _cpus() -> set[int] | None:
    """The CPUs this process may run on (a container's cpuset), or None where not told."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _busy_seconds() -> float | None:
    """CPU seconds spent busy so far on the CPUs this process may run on (in a container, not the
    host's others), or None where unreadable."""
    try:
        lines = STAT.read_text().splitlines()
    except OSError:
        return None
    mine, total = _cpus(), 0
    for line in lines:
        f = line.split()
        if not f or not f[0].startswith("cpu") or f[0] == "cpu" or not f[0][3:].isdigit():
            continue
        if mine is not None and int(f[0][3:]) not in mine:
            continue
        ticks = [int(v) for v in f[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)        # idle + iowait
        guest = sum(ticks[8:10]) if len(ticks) > 9 else 0             # already counted in user/nice
        total += sum(ticks) - idle - guest
    return total / os.sysconf("SC_CLK_TCK") if total or lines else None


def spare_cores(threads: int | None) -> float:
    """Cores of ours that measuring with ``threads`` threads leaves free: other work there does
    not disturb it (a container on a large host sees the host's every CPU)."""
    cpus = _cpus()
    return max(0.0, float(len(cpus) - threads)) if cpus and threads else 0.0


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Watch:
    """``with Watch(threads) as w: ...``; then ``w.others`` is the cores other processes took from
    those a ``threads``-thread measurement needs (beyond the spare ones), None where the platform
    does not tell."""
    threads: int | None = None
    others: float | None = None

    def __enter__(self) -> "Watch":
        self._t, self._busy, self._own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc) -> None:
        busy = _busy_seconds()
        wall = time.perf_counter() - self._t
        if busy is None or self._busy is None or wall <= 0:
            return
        # the kernel counts CPU time in ticks: each CPU's counter and our own (user, system, and
        # the children's) read up to a tick low at either end.  Over a short span that error,
        # divided by the wall time, would read as cores of other work: a probe of a millisecond
        # on a 24-CPU host read "24 cores busy".  The error is given to the quiet side.
        slack = (2 * len(_cpus() or (0, 0)) ** 0.5 + 4) / os.sysconf("SC_CLK_TCK")
        used = max(0.0, (busy - self._busy) - (_own_seconds() - self._own) - slack) / wall
        self.others = max(0.0, used - spare_cores(self.threads))


def spread(samples) -> float:
    s = [x for x in samples if x > 0]
    return (max(s) - min(s)) / min(s) if len(s) > 1 else 0.0


def others_now(seconds: float = 1.0, threads: int | None = None) -> float | None:
    """Cores other processes take over the next ``seconds`` (we sleep meanwhile) from those
    ``threads`` threads need; where /proc/stat is missing, the 1-minute load average."""
    with Watch(threads) as w:
        time.sleep(seconds)
    if w.others is not None:
        return w.others
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def verdict(others: float | None, samples=()) -> str | None:
    """Why a timing cannot be trusted, or None."""
    if others is not None and others > MAX_OTHERS:
        return f"other processes used {others:.2f} cores meanwhile"
    if spread(samples) > MAX_SPREAD:
        return f"its repeats differ by {spread(samples):.0%}"
    return None


def quiet(what: str, run: Callable[[], T], judge: Callable[[float | None, T], str | None],
          progress: Callable[[str], None] = lambda s: None, notes: list[str] | None = None,
          threads: int | None = None) -> T:
    """``run()``, taken again while ``judge(others' cores, result)`` finds a reason not to trust it
    (e.g. ``verdict``); MachineBusy after TRIES tries, or, given ``notes`` (the user said to
    measure anyway), the last result, the reason appended to ``notes``."""
    why = None
    for attempt in range(TRIES):
        with Watch(threads) as watch:
            out = run()
        if (why := judge(watch.others, out)) is None:
            return out
        progress(f"{what}: {why}; measuring it again")
        time.sleep(1.0 + attempt)
    if notes is not None:
        progress(f"warning: {what}: {why} ({TRIES} tries); recorded anyway")
        notes.append(f"{what}: {why}")
        return out
    raise MachineBusy(f"the machine is busy: measuring {what}, {why} ({TRIES} tries); figures measured now would be "
                      "wrong.  Stop the other work (see `top`) and rerun")
