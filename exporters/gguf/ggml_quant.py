"""ggml's own row quantizers, called directly: the code ``llama-quantize`` runs, without a file.

``ggml_quantize_chunk`` (ggml/src/ggml.c) turns float rows into any ggml block type.  It is
exported by the ggml library that llama-cpp-python ships, so a tensor can be quantized as it
streams out of the checkpoint: no full-size F16 intermediate on disk, memory about one tensor.
Rows are split across threads (ctypes releases the GIL during the call).  The ``imatrix``
argument is where importance weights enter for calibrated quantization.

The way back, ``dequantize``, calls the type's ``to_float`` from ggml's type traits: the code
llama.cpp runs on the tensor at inference.  The gguf package's numpy dequantizer gives the same
values but is two orders of magnitude slower, and calibration dequantizes every weight (GPTQ's
error after each block of columns) and the cost table's sample at every candidate type: on an 8B
model it was most of the run.  The traits struct is read only where its name, block and size
agree with ours (it is ggml's ABI, not ours); otherwise the gguf package's dequantizer is used.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgellm.core.ggml import TYPES
from edgellm.core.ggml import GGML_TYPES

TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    from importlib.util import find_spec

    # the package's folder, not the package: importing llama_cpp loads libllama, its chat
    # templates and jinja2 (0.15 s of a 5 s export), and only ggml's base library is needed here
    spec = find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llama-cpp-python is not installed: GGUF export needs its ggml library",
                                  name="llama_cpp")
    libdir = Path(next(iter(spec.submodule_search_locations))) / "lib"
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


class _Traits(ctypes.Structure):          # ggml.h, struct ggml_type_traits
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)   # releases the GIL


@lru_cache(maxsize=None)
def _to_float(type_name: str):
    """ggml's ``to_float`` for the type, or None when the library's traits do not match ours."""
    lib = _lib()
    get = getattr(lib, "ggml_get_type_traits", None)
    if get is None:
        return None
    get.argtypes = [ctypes.c_int]
    get.restype = ctypes.POINTER(_Traits)
    ptr = get(TYPE_IDS[type_name])
    if not ptr:
        return None
    t = ptr.contents
    spec = TYPES[type_name]
    name = (t.type_name or b"").decode("ascii", "replace").upper()
    if name != type_name or t.blck_size != spec.block or t.type_size != spec.block_bytes or not t.to_float:
        return None
    return _TO_FLOAT(t.to_float)


def spans(n: int, threads: int) -> list[tuple[int, int]]:
    """``n`` rows split into at most ``threads`` contiguous (start, end) spans."""
    step = -(-n // max(1, threads))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


@lru_cache(maxsize=4)
def pool(threads: int) -> ThreadPoolExecutor:
    """One pool of threads per size for the whole process.  A pool per call started 16 threads
    for every block of columns GPTQ rounds (tens of thousands on an 8B model)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="edgellm-ggml")


def _run(work, spans: list[tuple[int, int]]) -> None:
    if len(spans) == 1:
        work(spans[0])
    else:
        list(pool(len(spans)).map(work, spans))


def dequantize(type_name: str, data: np.ndarray, n_per_row: int, threads: int = 1) -> np.ndarray:
    """ggml ``type_name`` bytes ``data`` (rows of ``n_per_row`` values) -> float32 [rows, n_per_row]."""
    rb = row_bytes(type_name, n_per_row)
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if data.nbytes % rb:
        raise ValueError(f"{data.nbytes} bytes are not whole {type_name} rows of {n_per_row}")
    n = data.nbytes // rb
    fn = _to_float(type_name)
    if fn is None:
        import gguf

        out = gguf.quants.dequantize(data.reshape(n, rb), gguf.GGMLQuantizationType[type_name])
        return np.asarray(out, dtype=np.float32).reshape(n, n_per_row)
    out = np.empty((n, n_per_row), np.float32)

    def work(span: tuple[int, int]) -> None:
        a, b = span
        if b > a:
            fn(data[a * rb:].ctypes.data, out[a:].ctypes.data, (b - a) * n_per_row)

    _run(work, spans(n, threads))
    return out


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

    _run(work, spans(n, threads))
