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
