"""Write a Hugging Face checkpoint as an F16 GGUF file, streaming one tensor at a time.

Matrices are written as F16 and vectors (norms, biases) as F32, as llama.cpp's converter does.
Every tensor the architecture needs is checked present and of the right shape before anything is
written; tensors are written in the order the planner assumes (embeddings, then layer by layer),
which is also the order llama.cpp's quantizer counts layers in.  Big tensors are converted in row
chunks into one F16 buffer, so peak memory is about one tensor at two bytes per weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgellm.errors import BadInput
from edgellm.exporters.checkpoint import Checkpoint
from edgellm.exporters.gguf_arch import GgufArch
from edgellm.exporters.gguf_vocab import Vocab, add_to_writer
from edgellm.models.config import ModelConfig

CHUNK_ELEMENTS = 16 << 20          # 64 MB of float32 per conversion step
GGUF_FTYPE_MOSTLY_F16 = 1


@dataclass(frozen=True)
class Entry:
    gguf_name: str
    hf_name: str | None            # None for tables the converter computes (rope factors)
    shape: tuple[int, ...]         # numpy order (rows, cols)
    dtype: type


def _plan_tensors(model: ModelConfig, ckpt: Checkpoint, arch: GgufArch) -> list[Entry]:
    by_gguf: dict[str, str] = {}
    for hf in ckpt.names():
        g = arch.gguf_name(hf)
        if g is not None:
            if g in by_gguf:
                raise BadInput(f"{model.name}: checkpoint tensors {by_gguf[g]!r} and {hf!r} both map to {g}")
            by_gguf[g] = hf
    extras = dict(arch.extra_tensors())
    entries, missing = [], []
    for spec in model.tensors:
        want = (spec.ne1, spec.ne0) if spec.is_matrix else (spec.ne0,)
        dtype = np.float16 if spec.is_matrix else np.float32
        if spec.name in extras:
            entries.append(Entry(spec.name, None, want, np.float32))
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
        entries.append(Entry(spec.name, hf, want, dtype))
    if missing:
        raise BadInput(f"{model.name}: the checkpoint lacks {len(missing)} tensor(s) the architecture "
                       f"needs, e.g. {', '.join(missing[:3])}")
    if by_gguf:
        raise BadInput(f"{model.name}: the checkpoint has tensors config.json does not account for: "
                       f"{', '.join(list(by_gguf.values())[:3])}")
    return entries


def _convert(entry: Entry, ckpt: Checkpoint, arch: GgufArch, extras: dict) -> np.ndarray:
    if entry.hf_name is None:
        return extras[entry.gguf_name].astype(entry.dtype)
    if arch.needs_transform(entry.hf_name, entry.gguf_name) or len(entry.shape) < 2:
        data = ckpt.read(entry.hf_name)
        changed = arch.transform(entry.hf_name, entry.gguf_name, data)
        out = (data if changed is None else changed).astype(entry.dtype)
    else:
        out = np.empty(entry.shape, dtype=entry.dtype)
        rows = max(1, CHUNK_ELEMENTS // max(1, entry.shape[1]))
        at = 0
        for chunk in ckpt.read_rows(entry.hf_name, rows):
            out[at:at + len(chunk)] = chunk
            at += len(chunk)
    if entry.dtype == np.float16 and not np.isfinite(out).all():
        raise BadInput(f"{entry.hf_name}: values outside float16's range (or NaN); cannot write an F16 GGUF")
    return out


def write_f16_gguf(model: ModelConfig, ckpt: Checkpoint, arch: GgufArch, vocab: Vocab, folder: Path,
                   path: Path, progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Write ``path`` (the caller owns making it atomic)."""
    import gguf

    entries = _plan_tensors(model, ckpt, arch)
    extras = dict(arch.extra_tensors())
    w = gguf.GGUFWriter(path=None, arch=arch.gguf_arch_name)
    name = arch.general_name(Path(model.name).name, vocab.tokens)
    if name:
        w.add_name(name)
    w.add_file_type(GGUF_FTYPE_MOSTLY_F16)
    arch.add_metadata(w)
    add_to_writer(w, folder, vocab)
    for e in entries:
        nbytes = int(np.prod(e.shape)) * np.dtype(e.dtype).itemsize
        w.add_tensor_info(e.gguf_name, e.shape, np.dtype(e.dtype), nbytes)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    try:
        for i, e in enumerate(entries):
            w.write_tensor_data(_convert(e, ckpt, arch, extras))
            progress(i + 1, len(entries))
        w.flush()
    finally:
        w.close()
