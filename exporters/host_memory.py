"""Give freed memory back to the system while a long host job runs.

glibc's allocator keeps freed blocks in its arenas, and raises its mmap threshold as big blocks
are freed, so a loop that allocates and frees tensors of tens of MB (a layer's weights,
gradients and activations, again for every layer) grows the resident set far past what is alive:
measured on a Qwen2.5-0.5B-shape calibration, 1.43 GB resident with 0.61 GB alive.  A fixed mmap
threshold keeps big blocks out of the arenas (they are unmapped when freed), and ``release``
trims what the arenas still hold between phases.  Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20      # blocks from this size are mapped apart, and unmapped when freed

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt"):
                    _libc = lib
            except OSError:
                pass
    return _libc


def keep_big_blocks_apart() -> None:
    if lib := _glibc():
        lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release() -> None:
    if lib := _glibc():
        lib.malloc_trim(0)
