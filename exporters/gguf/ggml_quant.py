"""ggml's own row quantizers, called directly: the code ``llama-quantize`` runs, without a file.

``ggml_quantize_chunk`` (ggml/src/ggml.c) turns float rows into any ggml block type.  It is
exported by the ggml library that llama-cpp-python ships, so a tensor can be quantized as it
streams out of the checkpoint: no full-size F16 intermediate on disk, memory about one tensor.
Rows are split across threads (ctypes releases the GIL during the call).  The ``imatrix``
argument is where importance weights enter for calibrated quantization.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgellm.plan.ggml_types import TYPES
from edgellm.runtime.gguf_check import GGML_TYPES

TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(libdir.glob("libggml-base.*")) + sorted(libdir.glob("libggml.*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
            lib.ggml_quantize_chunk  # noqa: B018 - probe the symbol
        except (OSError, AttributeError):
            continue
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        return lib
    raise RuntimeError(f"no ggml library with ggml_quantize_chunk under {libdir}")


def row_bytes(type_name: str, n_per_row: int) -> int:
    return TYPES[type_name].row_bytes(n_per_row)


def quantize_into(type_name: str, rows: np.ndarray, out: np.ndarray, threads: int = 1,
                  imatrix: np.ndarray | None = None) -> None:
    """Quantize float32 ``rows`` [n, n_per_row] into the byte buffer ``out`` [n * row_bytes]."""
    tid = TYPE_IDS[type_name]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n, per_row = rows.shape
    rb = row_bytes(type_name, per_row)
    assert out.nbytes == n * rb and out.flags.c_contiguous
    lib = _lib()
    if imatrix is None and lib.ggml_quantize_requires_imatrix(tid):
        raise ValueError(f"{type_name} needs an importance matrix")
    imat = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)

    def work(span: tuple[int, int]) -> None:
        a, b = span
        if b <= a:
            return
        src = rows[a:b]
        dst = out[a * rb:b * rb]
        done = lib.ggml_quantize_chunk(tid, src.ctypes.data, dst.ctypes.data, 0, b - a, per_row,
                                       None if imat is None else imat.ctypes.data)
        assert done == (b - a) * rb

    step = -(-n // max(1, threads))
    spans = [(i, min(n, i + step)) for i in range(0, n, step)]
    if len(spans) == 1:
        work(spans[0])
    else:
        with ThreadPoolExecutor(len(spans)) as pool:
            list(pool.map(work, spans))
