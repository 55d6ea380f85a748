"""Our GGUF gate rejects crafted and damaged files before llama.cpp sees them."""

import struct

import pytest

from edgellm.errors import BadInput
from edgellm.runtime.gguf_check import read_header


def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<I", 4) + struct.pack("<I", value)


def tensor_info(name: str, dims, ttype=0, offset=0) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) \
        + struct.pack("<I", ttype) + struct.pack("<Q", offset)


def gguf(kvs=(), tensors=(), data=b"", version=3, magic=b"GGUF", n_kv=None, n_t=None) -> bytes:
    head = magic + struct.pack("<I", version) + struct.pack("<Q", len(tensors) if n_t is None else n_t) \
        + struct.pack("<Q", len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    pad = (-len(head)) % 32
    return head + b"\0" * pad + data


def check(tmp_path, blob: bytes, match: str):
    p = tmp_path / "x.gguf"
    p.write_bytes(blob)
    with pytest.raises(BadInput, match=match) as e:
        read_header(p)
    assert str(p) in e.value.message


def test_a_valid_file_passes(tmp_path):
    p = tmp_path / "ok.gguf"
    p.write_bytes(gguf([kv_u32("a.b", 1)], [tensor_info("t", [8, 2])], b"\0" * 64))
    h = read_header(p, check_meaning=False)
    assert h.metadata == {"a.b": 1} and h.tensors[0].nbytes == 64


@pytest.mark.parametrize("blob,match", [
    (gguf(magic=b"GGML"), "bad magic"),
    (gguf(version=99), "unsupported version 99"),
    (gguf(n_kv=10**12), "more than .* bytes can hold"),
    (gguf([kv_u32("a", 1), kv_u32("a", 2)]), "duplicate key 'a'"),
    (gguf([s("k") + struct.pack("<I", 8) + struct.pack("<Q", 10**15)]), "string of|needs"),
    (gguf([s("k") + struct.pack("<I", 9) + struct.pack("<I", 4) + struct.pack("<Q", 10**9)]), "array of 1000000000 elements"),
    (gguf([s("k") + struct.pack("<I", 77)]), "unknown value type 77"),
    (gguf([], [tensor_info("t", [8]), tensor_info("t", [8])], b"\0" * 64), "duplicate tensor 't'"),
    (gguf([], [tensor_info("t", [1 << 40, 1 << 40])], b"\0" * 64), "overflows"),
    (gguf([], [tensor_info("t", [8] * 5)], b"\0" * 64), "5 dimensions"),
    (gguf([], [tensor_info("t", [8, 0])], b"\0" * 64), "dimension of 0"),
    (gguf([], [tensor_info("t", [8, 2], ttype=99)], b"\0" * 64), "unknown type 99"),
    (gguf([], [tensor_info("t", [100, 2], ttype=12)], b"\0" * 4096), "not a multiple of Q4_K's block of 256"),
    (gguf([], [tensor_info("t", [8, 2], offset=4)], b"\0" * 128), "not aligned"),
    (gguf([], [tensor_info("t", [8, 2])], b"\0" * 10), "runs past the end of the file"),
    (gguf([], [tensor_info("a", [8, 2]), tensor_info("b", [8, 2], offset=32)], b"\0" * 256), "overlap"),
    (gguf([kv_u32("general.alignment", 3)]), "not a power of two"),
    (b"GGUF\x03\0\0", "truncated"),
])
def test_malformed_files_are_rejected(tmp_path, blob, match):
    check(tmp_path, blob, match)


def test_truncating_a_real_export_is_caught(tmp_path, tiny):
    from edgellm import models
    from edgellm.exporters.io.checkpoint import open_checkpoint
    from edgellm.models.families import family_for
    from edgellm.exporters.gguf.vocab import read_vocab
    from edgellm.exporters.gguf.write import write_gguf

    folder = tiny("llama")
    m = models.load_config(str(folder))
    path = tmp_path / "m.gguf"
    write_gguf(m, open_checkpoint(folder), family_for(m, "gguf"), read_vocab(folder, m.vocab), folder, path)
    assert len(read_header(path).tensors) == len(m.tensors)
    blob = path.read_bytes()
    for cut in (len(blob) - 1, len(blob) // 2, 100):
        check(tmp_path, blob[:cut], "truncated|runs past|bytes can hold")
