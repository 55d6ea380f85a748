"""Write a Hugging Face checkpoint as a GGUF file of any offered type, one tensor at a time.

Each tensor gets the ggml type llama.cpp's own recipe gives it (``edgellm.plan.gguf_recipes``,
checked against llama-quantize's output in the tests): vectors F32, other matrices F16 or a block
type, quantized row by row with ggml's own code (``ggml_quant``).  Values pass through float16
first, exactly as in llama.cpp's convert-then-quantize pipeline, so the tensor bytes are the same
as llama-quantize writes, without its full-size F16 intermediate file.

Every tensor the architecture needs is checked present and of the right shape before anything is
written; tensors are written in the order the planner assumes (embeddings, then layer by layer),
the order llama.cpp's quantizer counts layers in.  Big tensors are read and converted in row
chunks, so peak memory is about one converted tensor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgellm.errors import BadInput
from edgellm.exporters.checkpoint import Checkpoint
from edgellm.exporters.gguf_arch import GgufArch
from edgellm.exporters.gguf_vocab import Vocab, add_to_writer
from edgellm.exporters.ggml_quant import quantize_into, row_bytes
from edgellm.exporters.safetensors_reader import widen
from edgellm.models.config import ModelConfig
from edgellm.plan.gguf_recipes import tensor_types

CHUNK_ELEMENTS = 16 << 20          # 64 MB of float32 per conversion step
# llama_ftype values (llama.h) recorded as general.file_type
FILE_TYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17,
              "Q6_K": 18, "IQ4_XS": 30}
QUANTIZATION_VERSION = 2           # GGML_QNT_VERSION


@dataclass(frozen=True)
class Entry:
    gguf_name: str
    hf_name: str | None            # None for tables the converter computes (rope factors)
    shape: tuple[int, ...]         # numpy order (rows, cols)
    ggml_type: str                 # F32, F16 or a block type

    @property
    def nbytes(self) -> int:
        rows = self.shape[0] if len(self.shape) > 1 else 1
        return rows * row_bytes(self.ggml_type, self.shape[-1])


def _plan_tensors(model: ModelConfig, ckpt: Checkpoint, arch: GgufArch, quant: str) -> list[Entry]:
    by_gguf: dict[str, str] = {}
    for hf in ckpt.names():
        g = arch.gguf_name(hf)
        if g is not None:
            if g in by_gguf:
                raise BadInput(f"{model.name}: checkpoint tensors {by_gguf[g]!r} and {hf!r} both map to {g}")
            by_gguf[g] = hf
    extras = dict(arch.extra_tensors())
    entries, missing = [], []
    for spec, ggml_type in tensor_types(model, quant):
        want = (spec.ne1, spec.ne0) if spec.is_matrix else (spec.ne0,)
        if spec.name in extras:
            entries.append(Entry(spec.name, None, want, "F32"))
            continue
        hf = by_gguf.pop(spec.name, None)
        if hf is None:
            missing.append(spec.name)
            continue
        shape = tuple(ckpt.info(hf).shape)
        if arch.needs_transform(hf, spec.name) and len(shape) == 2 and shape != want:
            shape = shape[::-1]                       # stored transposed (GPT-2 Conv1D)
        if shape != want:
            raise BadInput(f"{model.name}: {hf} has shape {list(shape)}, config.json implies {list(want)}")
        entries.append(Entry(spec.name, hf, want, ggml_type))
    if missing:
        raise BadInput(f"{model.name}: the checkpoint lacks {len(missing)} tensor(s) the architecture "
                       f"needs, e.g. {', '.join(missing[:3])}")
    if by_gguf:
        raise BadInput(f"{model.name}: the checkpoint has tensors config.json does not account for: "
                       f"{', '.join(list(by_gguf.values())[:3])}")
    return entries


def _encode_span(rows: np.ndarray, ggml_type: str, out: np.ndarray, stored: str = "F32") -> None:
    rows = widen(rows, stored)
    if not np.isfinite(rows).all() or (ggml_type != "F32" and rows.size and np.abs(rows).max() > 65504):
        raise BadInput("values outside float16's range (or NaN); cannot convert")
    if ggml_type == "F32":
        out.view(np.float32).reshape(rows.shape)[...] = rows
        return
    half = rows.astype(np.float16)
    if ggml_type == "F16":
        out.view(np.float16).reshape(rows.shape)[...] = half
    else:
        quantize_into(ggml_type, half.astype(np.float32).reshape(rows.shape[0], -1), out, threads=1)


def _encode(rows: np.ndarray, ggml_type: str, out: np.ndarray, threads: int, stored: str = "F32") -> None:
    """Rows as stored -> ``out`` (a view of the tensor's final bytes) in ``ggml_type``; the rows are
    split across threads for the whole pipeline (numpy and ggml both release the GIL)."""
    n = rows.shape[0] if rows.ndim > 1 else 1
    if threads <= 1 or rows.ndim < 2 or n < 2 * threads:
        _encode_span(rows, ggml_type, out, stored)
        return
    per_row = out.nbytes // n
    step = -(-n // threads)
    spans = [(a, min(n, a + step)) for a in range(0, n, step)]
    with ThreadPoolExecutor(len(spans)) as pool:
        list(pool.map(lambda ab: _encode_span(rows[ab[0]:ab[1]], ggml_type,
                                              out[ab[0] * per_row:ab[1] * per_row], stored), spans))


def _convert(entry: Entry, ckpt: Checkpoint, arch: GgufArch, extras: dict, threads: int) -> np.ndarray:
    out = np.empty(entry.nbytes, dtype=np.uint8)
    if entry.hf_name is None:
        _encode(extras[entry.gguf_name].astype(np.float32), entry.ggml_type, out, threads)
        return out
    stored = "F32"
    if arch.needs_transform(entry.hf_name, entry.gguf_name) or len(entry.shape) < 2:
        data = ckpt.read(entry.hf_name)
        changed = arch.transform(entry.hf_name, entry.gguf_name, data)
        chunks = [(data if changed is None else changed).astype(np.float32)]
    else:
        rows = max(1, CHUNK_ELEMENTS // max(1, entry.shape[1]))
        stored = ckpt.stored_dtype(entry.hf_name)
        chunks = ckpt.read_rows(entry.hf_name, rows, raw=True)
    per_row = entry.nbytes // entry.shape[0] if len(entry.shape) > 1 else entry.nbytes
    at = 0
    try:
        for chunk in chunks:
            n = len(chunk) if len(entry.shape) > 1 else 1
            _encode(chunk.reshape(n, -1) if len(entry.shape) > 1 else chunk, entry.ggml_type,
                    out[at:at + n * per_row], threads, stored)
            at += n * per_row
    except BadInput as e:
        raise BadInput(f"{entry.hf_name}: {e.message}") from None
    return out


_NUMERIC = {4: "<u4", 5: "<i4", 6: "<f4"}     # GGUFValueType UINT32, INT32, FLOAT32 -> numpy


def writer_class():
    """gguf's writer, packing long homogeneous metadata arrays (the vocabulary: tokens, types,
    scores) in one go.  The generic path packs them one value at a time, about 2 s for 150k
    tokens; the bytes are the same (tests/test_gguf_write.py)."""
    import struct

    import gguf
    from gguf.constants import GGUFValueType

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if (vtype != GGUFValueType.ARRAY or not isinstance(val, list) or len(val) < 64
                    or self.endianess != gguf.GGUFEndian.LITTLE):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            first = type(val[0])
            if first not in (str, int, float) or any(type(v) is not first for v in val):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            ltype = sub_type if sub_type is not None else GGUFValueType.get_type(val[0])
            head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", ltype, len(val))
            if ltype == GGUFValueType.STRING:
                encoded = [v.encode("utf-8") for v in val]
                return head + b"".join(struct.pack("<Q", len(e)) + e for e in encoded)
            if int(ltype) in _NUMERIC:
                return head + np.asarray(val, dtype=_NUMERIC[int(ltype)]).tobytes()
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def write_gguf(model: ModelConfig, ckpt: Checkpoint, arch: GgufArch, vocab: Vocab, folder: Path,
               path: Path, quant: str = "F16", threads: int = 1,
               progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Write ``path`` as a ``quant`` GGUF (the caller owns making it atomic)."""
    import gguf

    entries = _plan_tensors(model, ckpt, arch, quant)
    extras = dict(arch.extra_tensors())
    w = writer_class()(path=None, arch=arch.gguf_arch_name)
    name = arch.general_name(Path(model.name).name, vocab.tokens)
    if name:
        w.add_name(name)
    w.add_file_type(FILE_TYPES[quant])
    if quant != "F16":
        w.add_quantization_version(QUANTIZATION_VERSION)
    arch.add_metadata(w)
    add_to_writer(w, folder, vocab)
    for e in entries:
        w.add_tensor_info(e.gguf_name, e.shape, np.dtype(np.float32), e.nbytes,
                          raw_dtype=gguf.GGMLQuantizationType[e.ggml_type])
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    try:
        for i, e in enumerate(entries):
            w.write_tensor_data(_convert(e, ckpt, arch, extras, threads))
            progress(i + 1, len(entries))
        w.flush()
    finally:
        w.close()
