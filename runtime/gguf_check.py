"""A bounds-checked GGUF header reader: the gate every file passes before llama.cpp parses it.

llama.cpp's loader has had a series of advisories from crafted files (CVE-2024-21802,
CVE-2025-49847, CVE-2026-27940, CVE-2026-33298), and the ``gguf`` package's reader does not check
tensor data against the file size.  This reader checks everything the header claims against the
bytes actually there: magic, version, counts, string and array lengths, nesting, duplicate keys
and tensors, dimension products, tensor types and block shapes, alignment, overlap, and tensor
data past the end of the file (truncation).  Standard library only.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from edgellm.core.ggml import GGML_TYPES
from edgellm.errors import BadInput
from edgellm.runtime.gguf_header import GgufHeader, Skipped, TensorRecord  # noqa: F401 - re-exported
from edgellm.core.files import open_regular
from edgellm.textfmt import quoted

MAGIC = b"GGUF"
MAX_DIMS = 4
MAX_STRING = 1 << 30
# ggml type id -> (name, elements per block, bytes per block), from ggml.h / ggml.c type_traits
# GGUF value types: id -> struct format (None: string / array)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
SMALL_ARRAY = 4096           # numeric arrays up to this are read (per-layer values); longer ones counted


class _Cursor:
    def __init__(self, f, size: int, fail):
        self.f, self.size, self.fail = f, size, fail

    def take(self, n: int) -> bytes:
        pos = self.f.tell()
        if n < 0 or n > self.size - pos:
            raise self.fail(f"needs {n} bytes at offset {pos}, only {self.size - pos} remain (truncated?)")
        return self.f.read(n)

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > MAX_STRING:
            raise self.fail(f"string of {n} bytes at offset {self.f.tell() - 8}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"string at offset {self.f.tell() - n} is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0):
        if vtype in SCALARS:
            return self.unpack(SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            if depth > 1:
                raise self.fail("arrays nested more than two deep")
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype not in SCALARS and etype not in (STRING, ARRAY):
                raise self.fail(f"array of unknown value type {etype}")
            least = struct.calcsize(SCALARS[etype]) if etype in SCALARS else 8
            if count * least > self.size - self.f.tell():
                raise self.fail(f"array of {count} elements is larger than the {self.size - self.f.tell()} bytes left")
            if etype in SCALARS and etype != 7:
                data = self.take(count * least)
                if count > SMALL_ARRAY:              # token scores, types: kept as a count only
                    return Skipped(count)
                return list(struct.unpack(f"<{count}{SCALARS[etype][1]}", data))
            if etype == STRING:
                return self.strings(count)
            return [self.value(etype, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown value type {vtype}")

    def strings(self, count: int) -> list[str]:
        """``count`` strings (a vocabulary: 150k of them), with the checks of ``string`` in one
        tight loop: a third of the time of reading them one ``value`` at a time."""
        read, out = self.f.read, []
        left = self.size - self.f.tell()
        for _ in range(count):
            head = read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n > left - 8:
                raise self.fail(f"needs {n} bytes at offset {self.f.tell()}, only {max(0, left - 8)} remain "
                                "(truncated?)")
            if n > MAX_STRING:
                raise self.fail(f"string of {n} bytes at offset {self.f.tell() - 8}")
            try:
                out.append(read(n).decode("utf-8"))
            except UnicodeDecodeError:
                raise self.fail(f"string at offset {self.f.tell() - n} is not UTF-8") from None
            left -= 8 + n
        return out


def read_header(path: Path, check_meaning: bool = True) -> GgufHeader:
    """Validate ``path`` as a GGUF file and return its header, or raise BadInput naming the flaw.
    ``check_meaning``: also the metadata llama.cpp asserts on (runtime/gguf_meta.py), so a file
    that would abort llama.cpp is refused here instead."""
    path = Path(path)

    def fail(what: str) -> BadInput:
        return BadInput(f"{path}: not a valid GGUF file: {what}")

    f, st = open_regular(path)
    with f:
        size = st.st_size
        c = _Cursor(f, size, fail)
        if c.take(4) != MAGIC:
            raise fail("bad magic (not a GGUF file)")
        version = c.unpack("<I")
        if version not in (2, 3):
            raise fail(f"unsupported version {version}")
        n_tensors, n_kv = c.unpack("<Q"), c.unpack("<Q")
        if n_kv > size // 12 or n_tensors > size // 24:
            raise fail(f"claims {n_kv} keys and {n_tensors} tensors, more than {size} bytes can hold")
        h = GgufHeader(version=version, file_size=size)
        for _ in range(n_kv):
            key = c.string()
            if key in h.metadata:
                raise fail(f"duplicate key {quoted(key)}")
            h.metadata[key] = c.value(c.unpack("<I"))
        align = h.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise fail(f"general.alignment {align!r} is not a power of two")
        infos = []
        seen = set()
        for _ in range(n_tensors):
            name = c.string()
            if name in seen:
                raise fail(f"duplicate tensor {quoted(name)}")
            seen.add(name)
            n_dims = c.unpack("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise fail(f"tensor {quoted(name)} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            dims = tuple(c.unpack("<Q") for _ in range(n_dims))
            ttype, offset = c.unpack("<I"), c.unpack("<Q")
            infos.append((name, dims, ttype, offset))
        h.data_start = -(-f.tell() // align) * align
    data_size = size - h.data_start
    spans = []
    for name, dims, ttype, offset in infos:
        if ttype not in GGML_TYPES:
            raise fail(f"tensor {quoted(name)} has unknown type {ttype}")
        tname, block, block_bytes = GGML_TYPES[ttype]
        n = 1
        for d in dims:
            if d == 0 or d >= 1 << 62:
                raise fail(f"tensor {quoted(name)} has a dimension of {d}")
            n *= d
            if n >= 1 << 62:
                raise fail(f"tensor {quoted(name)}: the product of its dimensions overflows")
        if dims[0] % block:
            raise fail(f"tensor {quoted(name)}: rows of {dims[0]} are not a multiple of {tname}'s block of {block}")
        nbytes = n // block * block_bytes
        if offset % align:
            raise fail(f"tensor {quoted(name)} is not aligned to {align} bytes")
        if offset + nbytes > data_size:
            raise fail(f"tensor {quoted(name)} runs past the end of the file (truncated?)")
        spans.append((offset, offset + nbytes, name))
        h.tensors.append(TensorRecord(name, dims, tname, offset, nbytes))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise fail(f"tensors {quoted(an)} and {quoted(bn)} overlap")
    if check_meaning:
        from edgellm.runtime.gguf_meta import check_metadata
        check_metadata(_with_other_parts(path, h, fail), fail)
    return h


SPLIT_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _with_other_parts(path: Path, h: GgufHeader, fail) -> GgufHeader:
    """For the first file of llama.cpp's split format, every part checked (llama.cpp opens them
    by name beside it) and their tensors joined, so the meaning is checked on the whole model."""
    count = h.metadata.get("split.count", 1)
    if not isinstance(count, int) or count <= 1:
        return h
    m = SPLIT_NAME.match(path.name)
    if h.metadata.get("split.no") != 0 or not m or int(m["count"]) != count or int(m["no"]) != 1 or count > 9999:
        raise fail(f"split part {h.metadata.get('split.no')} of {count}: open the first part, named "
                   "NAME-00001-of-NNNNN.gguf")
    merged = GgufHeader(h.version, dict(h.metadata), list(h.tensors), h.data_start, h.file_size)
    for i in range(2, count + 1):
        part = path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf")
        if not part.is_file():
            raise fail(f"split part {part.name} is missing")
        ph = read_header(part, check_meaning=False)
        if ph.metadata.get("split.no") != i - 1 or ph.metadata.get("split.count") != count:
            raise BadInput(f"{part}: not part {i} of {count} of {path.name}")
        merged.tensors += ph.tensors
    merged.metadata["split.count"] = 1                     # checked as one file
    return merged
