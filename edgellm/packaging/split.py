"""Splitting a GGUF into llama.cpp's own split format (``NAME-00001-of-0000N.gguf``, with the
``split.no``, ``split.count`` and ``split.tensors.count`` keys ``llama-gguf-split`` writes), so a
host with a per-file size limit can serve it and llama.cpp loads it directly from the first part.

The gguf package's writer does the splitting (``split_max_size``); its reader memory-maps the
source, so no part is ever held in memory.  Needs the ``gguf`` package (the [export] extra).
"""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import BadInput, EdgeLLMError

MIN_PART = 1_000_000


def split_gguf(src: Path, out_dir: Path, max_bytes: int) -> list[Path]:
    """Write ``src`` as parts of at most about ``max_bytes`` (a tensor is never cut) into
    ``out_dir``; the parts, first one first.  One part when the file already fits."""
    try:
        import gguf
    except ImportError:
        raise EdgeLLMError("--split needs the gguf package: pip install 'edgellm[export]'") from None
    if max_bytes < MIN_PART:
        raise BadInput(f"--split {max_bytes} bytes is too small; parts of at least 1 MB")
    reader = gguf.GGUFReader(str(src))
    biggest = max((t.n_bytes for t in reader.tensors), default=0)
    if biggest > max_bytes:
        raise BadInput(f"--split {max_bytes:,} bytes is smaller than the file's largest tensor "
                       f"({biggest:,} bytes); llama.cpp's split format never cuts a tensor")
    arch = reader.fields["general.architecture"].contents()
    stem = src.stem
    writer = gguf.GGUFWriter(str(out_dir / f"{stem}.gguf"), arch, split_max_size=max_bytes)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parts = sorted(out_dir.glob(f"{stem}-*-of-*.gguf"))
    return parts or [out_dir / f"{stem}.gguf"]
