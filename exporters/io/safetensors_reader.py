"""A bounds-checked, lazy safetensors reader: header validated before any tensor is touched.

Why our own: the file is untrusted input.  Every check here fails with one message naming the
file: header length past the end of the file, a header that is not a JSON object, an unknown
dtype, a shape that does not match its byte range, ranges past the data or overlapping, a file
truncated after its header.  Tensors are then read one at a time (or one chunk of rows at a time), so
peak memory is about one tensor, never the checkpoint.  bfloat16 is widened to
float32 with integer shifts, since numpy has no bfloat16.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgellm.errors import BadInput
from edgellm.core.model_files import shown
from edgellm.core.files import open_regular

MAX_HEADER = 100 << 20
DTYPES = {"F64": (np.float64, 8), "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
          "I64": (np.int64, 8), "I32": (np.int32, 4), "I16": (np.int16, 2), "I8": (np.int8, 1),
          "U8": (np.uint8, 1), "BOOL": (np.bool_, 1)}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int          # byte offset from the start of the data section
    end: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        f, st = open_regular(self.path)
        with f:
            size = st.st_size
            try:
                head = f.read(8)
                if len(head) < 8:
                    raise self._bad("shorter than the 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > MAX_HEADER:     # the number itself is not shown: it is file bytes
                    raise self._bad(f"the header length runs past the end of the {size}-byte file "
                                    f"(or the {MAX_HEADER >> 20} MiB limit)")
                raw = f.read(n)
            except OSError as e:
                raise BadInput(f"{self.path}: cannot read ({e.strerror})") from None
        if len(raw) < n:
            raise self._bad("truncated inside its header")
        self.data_start = 8 + n
        self.data_size = size - self.data_start
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):
            raise self._bad("header is not valid JSON") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        self.metadata = header.pop("__metadata__", {}) or {}
        self.tensors = {name: self._entry(name, spec) for name, spec in header.items()}
        self._check_ranges()

    def _bad(self, what: str) -> BadInput:
        return BadInput(f"{self.path}: not a valid safetensors file: {what}")

    def _entry(self, name: str, spec) -> TensorEntry:
        if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str) or spec["dtype"] not in DTYPES:
            raise self._bad(f"tensor {shown(name)} has an unknown dtype {shown(str(spec.get('dtype') if isinstance(spec, dict) else spec))}")
        shape, offs = spec.get("shape"), spec.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise self._bad(f"tensor {shown(name)} has a malformed shape {shown(str(shape))}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise self._bad(f"tensor {shown(name)} has malformed data_offsets {shown(str(offs))}")
        e = TensorEntry(name, spec["dtype"], tuple(shape), offs[0], offs[1])
        if e.end - e.begin != e.n_elements * DTYPES[e.dtype][1]:
            raise self._bad(f"tensor {shown(name)}: {e.end - e.begin} bytes do not hold shape {list(e.shape)} of {e.dtype}")
        return e

    def _check_ranges(self) -> None:
        last_end, last = 0, None
        for e in sorted(self.tensors.values(), key=lambda t: (t.begin, t.end)):
            if e.begin < last_end:
                raise self._bad(f"tensors {shown(last)} and {shown(e.name)} overlap")
            last_end, last = e.end, e.name
        if last_end > self.data_size:
            raise self._bad(f"truncated: tensor data needs {last_end} bytes after the header, "
                            f"the file has {self.data_size}")

    def _read(self, e: TensorEntry, first_row: int = 0, n_rows: int | None = None) -> np.ndarray:
        """Rows of a tensor, read into memory.  Plain reads rather than a memory map: mapped file
        pages would count toward this process's resident memory for as long as it runs."""
        np_dtype, itemsize = DTYPES[e.dtype]
        if not e.shape:
            count, offset, shape = 1, e.begin, ()
        else:
            row = math.prod(e.shape[1:]) if len(e.shape) > 1 else 1
            n_rows = e.shape[0] - first_row if n_rows is None else min(n_rows, e.shape[0] - first_row)
            count, offset, shape = n_rows * row, e.begin + first_row * row * itemsize, (n_rows, *e.shape[1:])
        with open(self.path, "rb") as f:
            f.seek(self.data_start + offset)
            data = np.fromfile(f, dtype=np_dtype, count=count)
        if data.size != count:
            raise self._bad(f"tensor {shown(e.name)} is truncated")
        return data.reshape(shape)

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 (floats) or its own dtype (integers)."""
        e = self.tensors[name]
        return _widen(self._read(e), e.dtype)

    def read_rows(self, name: str, rows_per_chunk: int, raw: bool = False) -> Iterator[np.ndarray]:
        """The tensor in chunks of whole rows (first dimension), for streaming: float32, or with
        ``raw`` as stored (bfloat16 as uint16; ``widen`` converts), so callers can widen in threads."""
        e = self.tensors[name]
        if not e.shape:
            yield _widen(self._read(e), e.dtype)
            return
        for start in range(0, e.shape[0], rows_per_chunk):
            chunk = self._read(e, start, rows_per_chunk)
            yield chunk if raw else _widen(chunk, e.dtype)

    def read_picked_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, distinct) of a matrix as float32, each run of consecutive rows
        one read: a sample of a big matrix costs its rows, not the whole tensor."""
        e = self.tensors[name]
        rows = np.asarray(rows, dtype=np.int64)
        if len(e.shape) < 2 or (len(rows) and (rows[0] < 0 or rows[-1] >= e.shape[0])):
            raise ValueError(f"rows outside {shown(name)}")
        out = np.empty((len(rows), *e.shape[1:]), dtype=DTYPES[e.dtype][0])
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            if len(run):
                out[run[0]:run[-1] + 1] = self._read(e, int(rows[run[0]]), len(run))
        return _widen(out, e.dtype)

    def dtype(self, name: str) -> str:
        return self.tensors[name].dtype


WIDENED_AS_IS = frozenset({"F16", "F32", "F64"})     # safetensors dtypes numpy widens itself


def widen(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values as float32 (bfloat16 is stored as uint16)."""
    return _widen(arr, dtype)


def _widen(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        wide = arr.astype(np.uint32)
        wide <<= 16                                   # in place: one pass, one allocation
        return wide.view(np.float32)
    if dtype in WIDENED_AS_IS:
        return arr.astype(np.float32)
    return np.array(arr)
