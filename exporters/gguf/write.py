"""Write a Hugging Face checkpoint as a GGUF file of any offered type, one tensor at a time.

Each tensor gets the ggml type llama.cpp's own recipe gives it (``edgellm.formats.gguf_recipes``,
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

import hashlib
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgellm.exporters import host_memory
from edgellm.errors import BadInput
from edgellm.exporters.io.checkpoint import Checkpoint
from edgellm.models.families import Family
from edgellm.exporters.gguf.vocab import Vocab, add_to_writer
from edgellm.exporters.gguf.ggml_quant import pool, quantize_into, row_bytes, spans
from edgellm.exporters.io.safetensors_reader import widen
from edgellm.models.config import ModelConfig
from edgellm.formats.gguf_recipes import tensor_types

# values converted at a time: 8 MB of float32, under glibc's largest mmap threshold (32 MB), so
# a freed chunk's memory is reused rather than mapped, faulted in and zeroed afresh (64 MB chunks:
# a plain 0.5B Q4_K_M export 0.4 s slower on 2 cores, peak RSS 345 MB against 243)
CHUNK_ELEMENTS = 2 << 20
# ... and where GPTQ rounds the rows: fewer, larger chunks, so a GPU's error updates are a few
# big products (the 8B shape's calibrated export was measured with these)
GPTQ_CHUNK_ELEMENTS = 16 << 20
# chunks in ggml's pool at once, rounded or queued: with 1, a thread that finished its span waited
# for this thread to hand over the next chunk (8.37 s, mean of five plain 0.5B Q4_K_M exports on a
# 2-core Zen 3 EPYC); with 2 it finds that chunk queued (7.98 s); each one more holds one more chunk
QUEUED_CHUNKS = 2
# llama_ftype values (llama.h) recorded as general.file_type
FILE_TYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17,
              "Q6_K": 18, "IQ4_XS": 30}
QUANTIZATION_VERSION = 2           # GGML_QNT_VERSION


@dataclass(frozen=True)
class Entry:
    gguf_name: str
    hf_name: str | None            # None for tables the converter computes (rope factors)
    shape: tuple[int, ...]         # numpy order ([experts,] rows, cols)
    ggml_type: str                 # F32, F16 or a block type
    experts: tuple[str, ...] = ()  # a mixture of experts' per-expert tensors, stacked in this order

    @property
    def rows(self) -> int:
        """Rows of the tensor's data (every expert's, stacked)."""
        return int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1

    @property
    def nbytes(self) -> int:
        return self.rows * row_bytes(self.ggml_type, self.shape[-1])


def plan_tensors(model: ModelConfig, ckpt: Checkpoint, arch: Family, quant: str,
                 types: dict[str, str] | None = None) -> list[Entry]:
    """Every tensor to write, checked against the checkpoint, with llama.cpp's recipe type for
    ``quant`` (or the type ``types`` names for it: a calibrated mix)."""
    by_gguf: dict[str, str] = {}
    stacks: dict[str, dict[int, str]] = {}        # merged expert tensor -> expert index -> checkpoint name
    for hf in ckpt.names():
        g = arch.gguf_name(hf)
        if g is not None and (e := arch.expert_of(hf)) is not None:
            if e[1] in stacks.setdefault(g, {}):
                raise BadInput(f"{model.name}: checkpoint tensors {stacks[g][e[1]]!r} and {hf!r} are both expert {e[1]} of {g}")
            stacks[g][e[1]] = hf
        elif g is not None:
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
        if spec.experts > 1:
            entries.append(_stacked(model, ckpt, spec, stacks.pop(spec.name, {}), want,
                                    (types or {}).get(spec.name, ggml_type)))
            continue
        hf = by_gguf.pop(spec.name, None)
        if hf is None:
            missing.append(spec.name)
            continue
        shape = tuple(ckpt.info(hf).shape)
        if arch.needs_transform(hf, spec.name) and len(shape) == 2 and shape != want:
            shape = shape[::-1]                       # stored transposed (GPT-2 Conv1D)
        elif arch.needs_transform(hf, spec.name) and len(shape) == 3 and shape[1] == 1:
            shape = (shape[0], shape[2])              # a depthwise convolution's [channels, 1, taps] (LFM2)
        if shape != want:
            raise BadInput(f"{model.name}: {hf} has shape {list(shape)}, config.json implies {list(want)}")
        entries.append(Entry(spec.name, hf, want, (types or {}).get(spec.name, ggml_type)))
    if missing:
        raise BadInput(f"{model.name}: the checkpoint lacks {len(missing)} tensor(s) the architecture "
                       f"needs, e.g. {', '.join(missing[:3])}")
    left = list(by_gguf.values()) + [n for s in stacks.values() for n in s.values()]
    if left:
        raise BadInput(f"{model.name}: the checkpoint has tensors config.json does not account for: "
                       f"{', '.join(left[:3])}")
    return entries


def _stacked(model: ModelConfig, ckpt: Checkpoint, spec, found: dict[int, str], want: tuple[int, ...],
             ggml_type: str) -> Entry:
    """A layer's experts as one [experts, rows, cols] tensor, each expert checked present and shaped."""
    missing = [i for i in range(spec.experts) if i not in found]
    if missing or len(found) != spec.experts:
        extra = sorted(set(found) - set(range(spec.experts)))
        raise BadInput(f"{model.name}: {spec.name} needs experts 0-{spec.experts - 1} (config.json); the checkpoint "
                       + (f"lacks expert(s) {missing[:3]}" if missing else f"has expert(s) {extra[:3]} beyond them"))
    names = tuple(found[i] for i in range(spec.experts))
    for hf in names:
        if tuple(ckpt.info(hf).shape) != want:
            raise BadInput(f"{model.name}: {hf} has shape {list(ckpt.info(hf).shape)}, config.json implies {list(want)}")
    return Entry(spec.name, names[0], (spec.experts, *want), ggml_type, names)


@lru_cache(maxsize=1)
def _bf16_f16_table() -> np.ndarray:
    """Every bfloat16 bit pattern -> its float16 rounding (a 65536-entry table): one gather for an
    F16 file's bytes."""
    wide = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return wide.astype(np.float16)


_BF16_F16_OVERFLOW = 0x4780        # |bfloat16| bits from here up round to inf in float16 (or are inf/NaN)
_BF16_F16_NORMAL = 0x3880          # |bfloat16| bits below this are under 2⁻¹⁴: float16's subnormals
_FIXUP_SLICE = 1 << 20             # values checked and fixed at a time (bounds the index array: 8 MB)


def _bf16_f16_rounded(rows: np.ndarray) -> np.ndarray:
    """bfloat16 bits [n, ...] -> float32 values rounded through float16, bit for bit as
    ``astype(float16).astype(float32)`` (every pattern: tests/test_gguf_write.py).  bfloat16's 8
    significant bits fit float16's 11, so from 2⁻¹⁴ up (float16's normals; past its range is
    refused) the value is already float16's: widening is the rounding.  Below, float16 keeps
    multiples of 2⁻²⁴, rounded to nearest even: (x + 0.75) − 0.75 in float32, whose spacing at
    0.75 is 2⁻²⁴, does exactly that; the sign is put back for the zeros.  A widening shift and
    a fix-up of the few tiny values, in slices so that a tensor of tiny values costs no more
    memory than one of normal ones: 2-3x faster than a table gather (which numpy does one element
    at a time), which was a fifth of a plain Q4_K_M export's thread time."""
    rows = np.ascontiguousarray(rows)
    out = np.left_shift(rows, 16, dtype=np.uint32).view(np.float32).reshape(rows.shape[0], -1)
    flat_in, flat = rows.reshape(-1), out.reshape(-1)
    for a in range(0, flat.size, _FIXUP_SLICE):
        magnitude = flat_in[a:a + _FIXUP_SLICE] & np.uint16(0x7FFF)
        if int(magnitude.max()) >= _BF16_F16_OVERFLOW:
            raise BadInput("values outside float16's range (or NaN); cannot convert")
        tiny = np.flatnonzero(magnitude - np.uint16(1) < np.uint16(_BF16_F16_NORMAL - 1)) + a   # zeros: as they are
        if tiny.size:
            v = flat[tiny]
            flat[tiny] = np.copysign((v + np.float32(0.75)) - np.float32(0.75), v)
    return out


def _encode_span(rows: np.ndarray, ggml_type: str, out: np.ndarray, stored: str = "F32",
                 imatrix: np.ndarray | None = None) -> None:
    if ggml_type not in ("F32", "F16"):
        quantize_into(ggml_type, _f16_rounded(rows, stored), out, threads=1, imatrix=imatrix)
    elif ggml_type == "F16" and stored == "BF16":
        _check_bf16(rows)
        np.take(_bf16_f16_table(), rows, out=out.view(np.float16).reshape(rows.shape))
    else:
        rows = widen(rows, stored)
        _check_finite(rows, ggml_type == "F16")
        dtype = np.float16 if ggml_type == "F16" else np.float32
        out.view(dtype).reshape(rows.shape)[...] = rows


def _check_bf16(rows: np.ndarray) -> None:
    if rows.size and int((rows & 0x7FFF).max()) >= _BF16_F16_OVERFLOW:
        raise BadInput("values outside float16's range (or NaN); cannot convert")


def _check_finite(rows: np.ndarray, to_f16: bool) -> None:
    if not np.isfinite(rows).all() or (to_f16 and rows.size and np.abs(rows).max() > 65504):
        raise BadInput("values outside float16's range (or NaN); cannot convert")


def _f16_rounded(rows: np.ndarray, stored: str) -> np.ndarray:
    """Rows as stored -> float32 values rounded through float16 (what the quantizer sees)."""
    if stored == "BF16":
        return _bf16_f16_rounded(rows)
    rows = widen(rows, stored)
    _check_finite(rows, True)
    return rows.astype(np.float16).astype(np.float32).reshape(rows.shape[0], -1)


def _f16_rounded_rows(rows: np.ndarray, stored: str) -> np.ndarray:
    """``_f16_rounded`` for GPTQ's rows (torch is imported there): torch's conversions run on every
    core, numpy's lookup on one (a minute of an 8B calibrated export on 16 cores); bit for bit
    the same values (float16's round to nearest even, tests/test_gguf_write.py)."""
    if stored != "BF16":
        return _f16_rounded(rows, stored)
    import torch

    _check_bf16(rows)
    t = torch.from_numpy(np.ascontiguousarray(rows).view(np.int16)).view(torch.bfloat16)
    return t.to(torch.float16).to(torch.float32).numpy().reshape(rows.shape[0], -1)


def _named(e: Entry, fn, *args) -> None:
    """``fn(*args)`` for tensor ``e``: bad input says which tensor."""
    try:
        return fn(*args)
    except BadInput as err:
        raise BadInput(f"{e.hf_name}: {err.message}") from None


def _importance(imatrix: dict | None, e: Entry, row: int) -> np.ndarray | None:
    """The importance weights for ``e``'s rows from ``row`` on: a stacked expert tensor's are per
    expert (a list, an entry per expert: its own, or None for none; a chunk never spans two
    experts: each expert's rows are read apart), as llama.cpp hands each expert's slice of its
    importance matrix to the quantizer."""
    imp = (imatrix or {}).get(e.gguf_name)
    if isinstance(imp, list):
        return imp[row // (e.rows // len(e.experts))]
    return imp


def _encode(e: Entry, rows: np.ndarray, out: np.ndarray, threads: int, stored: str = "F32",
            imatrix: np.ndarray | None = None) -> list[Future]:
    """Rows of tensor ``e`` as stored -> ``out`` (a view of its final bytes) in its ggml type,
    handed to ggml's pool of ``threads`` in row spans (numpy and ggml both release the GIL): their
    futures.  The caller reads and hands over the next chunk while these run, so the threads never
    wait for it (waiting on each chunk left each of two threads idle 2 s of a 10 s export)."""
    n = rows.shape[0] if rows.ndim > 1 else 1
    parts = spans(n, threads) if rows.ndim > 1 and n >= 2 * threads else [(0, n)]
    per_row = out.nbytes // n
    return [pool(max(1, threads)).submit(_named, e, _encode_span, rows[a:b] if rows.ndim > 1 else rows, e.ggml_type,
                                         out[a * per_row:b * per_row], stored, imatrix)
            for a, b in parts]


def _chunks(entry: Entry, ckpt: Checkpoint, arch: Family, extras: dict,
            elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[np.ndarray, str]]:
    """A tensor's values as (row chunk, stored dtype): transformed tensors and vectors whole, plain
    matrices in row chunks as stored (bfloat16 stays uint16 until the encoder's threads widen it)."""
    if entry.hf_name is None:
        yield extras[entry.gguf_name].astype(np.float32), "F32"
    elif not entry.experts and (arch.needs_transform(entry.hf_name, entry.gguf_name) or len(entry.shape) < 2):
        data = ckpt.read(entry.hf_name)
        changed = arch.transform(entry.hf_name, entry.gguf_name, data)
        yield (data if changed is None else changed).astype(np.float32), "F32"
    else:
        rows = max(1, elements // max(1, entry.shape[-1]))
        for name in entry.experts or (entry.hf_name,):     # stacked experts: one after another
            stored = ckpt.stored_dtype(name)
            for chunk in ckpt.read_rows(name, rows, raw=True):
                yield chunk, stored


def _read_ahead(items: Iterator, depth: int = 1) -> Iterator:
    """``items`` produced by a background thread one step ahead of the consumer, so reading the
    next chunk from disk overlaps quantizing this one.  Errors surface in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as e:              # handed to the consumer
            put((done, e))

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        t.join()


def _tensor_chunks(entries: list[Entry], ckpt: Checkpoint, arch: Family, extras: dict,
                   elements: int = CHUNK_ELEMENTS) -> Iterator:
    for i, e in enumerate(entries):
        for chunk, stored in _chunks(e, ckpt, arch, extras, elements):
            yield i, chunk, stored


_NUMERIC = {4: "<u4", 5: "<i4", 6: "<f4"}     # GGUFValueType UINT32, INT32, FLOAT32 -> numpy


def writer_class():
    """gguf's writer, packing long homogeneous metadata arrays (the vocabulary: tokens, types,
    scores) in one go.  The generic path packs them one value at a time, about 2 s for 150k
    tokens; the bytes are the same (tests/test_gguf_write.py)."""
    import struct

    import gguf
    from gguf.constants import GGUFValueType

    class Writer(gguf.GGUFWriter):
        """... and hashing the file as it is written (``sha256``: its digest once whole), so the
        manifest need not read the artifact again: the writer's thread hashes each tensor's bytes
        while the next ones are quantized, where reading the finished file back was a
        single-core tail of the export (0.26 s for 400 MB)."""
        _sha = None
        _hashed = 0

        def write_ti_data_to_file(self) -> None:
            super().write_ti_data_to_file()
            if self.fout is not None and len(self.fout) == 1:       # (one file: no shards)
                fout = self.fout[0]
                fout.flush()
                self._sha, self._hashed = hashlib.sha256(), fout.tell()
                with open(fout.name, "rb") as f:                    # the header just written: small
                    self._sha.update(f.read(self._hashed))

        def write_tensor_data(self, tensor, tensor_endianess=None) -> None:
            before = self.fout[0].tell() if self._sha is not None else 0
            super().write_tensor_data(tensor, tensor_endianess)
            if self._sha is None:
                return
            after = self.fout[0].tell()
            lead = gguf.GGUFWriter.ggml_pad(before, self.data_alignment) - before
            data = np.ascontiguousarray(tensor).view(np.uint8).reshape(-1)
            if before != self._hashed or after - before < lead + data.nbytes:
                self._sha = None                                    # not the layout assumed: not hashed
                return
            self._sha.update(bytes(lead))
            self._sha.update(data)
            self._sha.update(bytes(after - before - lead - data.nbytes))
            self._hashed = after

        def sha256(self) -> str | None:
            """The whole file's digest, when every byte of it went through the hash."""
            if self._sha is None or self.fout is None or len(self.fout) != 1:
                return None
            self.fout[0].flush()
            return self._sha.hexdigest() if os.fstat(self.fout[0].fileno()).st_size == self._hashed else None

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


def write_gguf(model: ModelConfig, ckpt: Checkpoint, arch: Family, vocab: Vocab, folder: Path,
               path: Path, quant: str = "F16", threads: int = 1,
               progress: Callable[[int, int], None] = lambda done, total: None,
               types: dict[str, str] | None = None, imatrix: dict[str, np.ndarray] | None = None,
               compensators=None) -> str | None:
    """Write ``path`` as a ``quant`` GGUF (the caller owns making it atomic) and return its
    sha256 (None where the writer could not hash it as it wrote).  ``types`` overrides
    the recipe's type per GGUF tensor name; ``imatrix`` (per GGUF tensor name, one weight per
    column) is handed to ggml's quantizer; ``compensators`` (``ggml_gptq.Compensators``) round
    the tensors it has a Hessian for with GPTQ's error compensation: a calibrated file."""
    from edgellm.exporters.gguf.gptq import quantize_rows

    import gguf

    entries = plan_tensors(model, ckpt, arch, quant, types)
    extras = dict(arch.extra_tensors())
    w = writer_class()(path=None, arch=arch.gguf_arch_name)

    def write_header() -> None:
        """The metadata, vocabulary and tensor table, written by the writer's thread as its first
        job while the first tensors are rounded (a third of a second of Python for a 150k-token
        vocabulary, which held both cores' rounding back)."""
        from edgellm.exporters.gguf.card import general_metadata

        name = arch.general_name(Path(model.name).name, vocab.tokens)
        md = general_metadata(folder, name, model.n_params)        # general.*: the card + gguf's heuristics
        md.name = name or "-"                                       # gguf's writer insists on a name ...
        md.set_gguf_meta_model(w)
        if name is None:                                            # ... which the family wants left out
            for kv in w.kv_data:
                kv.pop("general.name", None)
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

    outs = [np.empty(0, np.uint8)] * len(entries)
    filled = [0] * len(entries)
    workers = compensators.workers if compensators is not None else 1
    done: list = []                         # (tensor index, its chunks' futures) not yet written, in order
    try:
        # writing tensor i overlaps encoding i + 1; with several ``workers`` (a calibration on a
        # GPU) GPTQ rounds that many row chunks at once, so ggml's rounding of one (the CPU's
        # cores) overlaps the error updates of another (the GPU), and tensors are written in order
        # as they complete
        with ThreadPoolExecutor(1) as writer, ThreadPoolExecutor(workers, thread_name_prefix="edgellm-gptq") as gptq:
            pending = writer.submit(write_header)       # the writer's jobs run in order: the header first

            def write_ready(limit: int) -> None:
                """Wait until at most ``limit`` pieces (a chunk's row spans in ggml's pool, or
                GPTQ's chunks) are queued or being rounded, then write the tensors at the front
                whose chunks are all in and rounded."""
                nonlocal pending
                while True:
                    futures = [f for _, fs in done for f in fs]
                    for f in futures:
                        if f.done():
                            f.result()                  # a chunk's error, raised as soon as it is known
                    live = [f for f in futures if not f.done()]
                    if len(live) <= limit:
                        break
                    wait(live, return_when=FIRST_COMPLETED)
                while done:
                    i, fs = done[0]
                    if filled[i] != entries[i].nbytes or not all(f.done() for f in fs):
                        return
                    done.pop(0)
                    pending.result()
                    pending = writer.submit(w.write_tensor_data, outs[i])
                    outs[i] = np.empty(0, np.uint8)     # the writer holds the only reference
                    if compensators:
                        host_memory.release()           # a layer's GPTQ factors and XᵀX, freed: back
                    progress(i + 1, len(entries))

            elements = GPTQ_CHUNK_ELEMENTS if compensators else CHUNK_ELEMENTS
            for i, chunk, stored in _read_ahead(_tensor_chunks(entries, ckpt, arch, extras, elements)):
                e = entries[i]
                if not outs[i].size:
                    outs[i] = np.empty(e.nbytes, dtype=np.uint8)
                    done.append((i, []))
                matrix = len(e.shape) > 1
                n = len(chunk) if matrix else 1
                per_row = e.nbytes // e.rows if matrix else e.nbytes
                at = filled[i]
                comp = compensators.get(e.gguf_name, e.ggml_type, e.shape[-1]) if compensators and matrix else None
                dst = outs[i][at:at + n * per_row]
                if comp is not None and workers > 1:
                    rows = _f16_rounded_rows(chunk.reshape(n, -1), stored)
                    # (each worker's ggml calls share the one pool of ``threads``)
                    done[-1][1].append(gptq.submit(_named, e, quantize_rows, rows, e.ggml_type, dst, comp, threads))
                elif comp is not None:      # one at a time, in this thread: the next layer's XᵀX is not
                    # read while this one is rounded (a CPU has no cores to spare, nor the memory)
                    _named(e, quantize_rows, _f16_rounded_rows(chunk.reshape(n, -1), stored), e.ggml_type, dst,
                           comp, threads)
                else:               # ggml's pool rounds it while this thread reads the next chunk
                    done[-1][1].extend(_encode(e, chunk.reshape(n, -1) if matrix else chunk, dst, threads, stored,
                                               _importance(imatrix, e, at // per_row if matrix else 0)))
                filled[i] = at + n * per_row
                write_ready(workers if comp is not None else max(1, threads) * QUEUED_CHUNKS)
            write_ready(0)
            pending.result()
        w.flush()
        return w.sha256()
    finally:
        for _, fs in done:                  # an error or an interrupt: nothing more is rounded
            for f in fs:
                f.cancel()
        w.close()
