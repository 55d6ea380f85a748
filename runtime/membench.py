"""Measure what decode and prefill depend on: memory bandwidth and dense matmul throughput.

numpy's reductions and copies release the GIL, so one Python thread per core streams memory in
parallel.  Buffers are far larger than any cache; each figure is the best of several passes,
the usual practice for bandwidth (STREAM) since noise only ever slows a pass down.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Bandwidth:
    read: float      # bytes/s, all threads summing their slice
    copy: float      # bytes/s, STREAM convention: bytes read + bytes written
    threads: int
    buffer_bytes: int


def _best_time(fn: Callable[[], None], passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_bandwidth(threads: int, buffer_bytes: int = 512 << 20, passes: int = 5) -> Bandwidth:
    """Multi-threaded read and copy bandwidth over ``buffer_bytes`` of float64."""
    n = buffer_bytes // 8
    src = np.ones(n)
    dst = np.empty_like(src)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        def run(work: Callable[[slice], object]) -> None:
            list(pool.map(work, slices))
        run(lambda s: src[s].sum())                     # warm up: page in both buffers
        run(lambda s: np.copyto(dst[s], src[s]))
        t_read = _best_time(lambda: run(lambda s: src[s].sum()), passes)
        t_copy = _best_time(lambda: run(lambda s: np.copyto(dst[s], src[s])), passes)
    size = n * 8
    return Bandwidth(read=size / t_read, copy=2 * size / t_copy, threads=threads, buffer_bytes=size)


def matmul_throughput(n: int = 1024, passes: int = 5) -> float:
    """Dense fp32 matmul rate (FLOP/s) through numpy's BLAS, using every thread it is allowed."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b                                               # warm up threads and caches
    reps = 4
    t = _best_time(lambda: [a @ b for _ in range(reps)], passes)
    return 2 * n**3 * reps / t


def timed_steps(step: Callable[[], object], n: int, evict: Callable[[], None] | None = None) -> float:
    """Seconds ``n`` calls of ``step`` took, ``evict()`` (a CacheEvictor) run untimed before each."""
    spent = 0.0
    for _ in range(n):
        if evict is not None:
            evict()
        t0 = time.perf_counter()
        step()
        spent += time.perf_counter() - t0
    return spent


class CacheEvictor:
    """Reads a buffer twice the last-level cache (at least 64 MiB, at most an eighth of the RAM
    and 2 GiB), a byte of each cache line: called between decoded tokens, it leaves a small probe's
    weights to stream from memory as a real model's do.  On a CPU whose shared cache holds a
    probe (a cloud Xeon's 480 MiB L3: probes of 50-100 MB), decode timed warm ran Q4_0 2.4x
    faster per weight than a model of 400 MB, which no prediction for real models can use.
    The read runs on one thread: on a CPU whose cores have last-level caches of their own (several
    chiplets or sockets) it refills the reading core's, not necessarily those of the cores the
    runtime's threads ran on (a known limit; the checked machines have one shared L3).  A
    container's memory: at most a quarter of what is available now, halved again if numpy cannot
    have it, down to 8 MiB."""

    def __init__(self, cache_bytes: int | None, ram_bytes: int | None = None, available: int | None = None):
        size = max(2 * (cache_bytes or 0), 64 << 20)
        size = int(min(size, 2 << 30, (ram_bytes or 1 << 40) // 8, (available or 1 << 40) // 4))
        while True:
            try:
                self._buf = np.ones(max(size, 8 << 20), dtype=np.uint8)
                break
            except MemoryError:
                if size <= 8 << 20:
                    raise
                size //= 2
        self.nbytes = self._buf.nbytes

    def __call__(self) -> None:
        self._buf[::64].sum(dtype=np.uint64)


def cache_evictor() -> CacheEvictor:
    from edgellm.runtime import hostinfo

    return CacheEvictor(hostinfo.last_level_cache_bytes(), hostinfo._ram_bytes(), hostinfo.available_bytes())
