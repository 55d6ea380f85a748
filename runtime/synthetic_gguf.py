"""A random-weight llama-shaped GGUF written with numpy alone, for measuring kernel speed on the
device (``edgellm device measure``), where neither torch nor the gguf package is
installed.  Speed does not depend on the weights' values, only on the shape and the type; the
F16 file is then quantized to each type by llama.cpp's own quantizer (``llama_model_quantize``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALIGN = 32
F32, F16 = 0, 1


@dataclass(frozen=True)
class Shape:
    hidden: int = 1024
    ffn: int = 2816
    layers: int = 8
    heads: int = 16
    kv_heads: int = 4
    vocab: int = 4096
    context: int = 1024
    head_dim: int = 0           # 0: hidden / heads (llama's default); else its own key/value length

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _u32(key, v):
    return _kv(key, 4, struct.pack("<I", v))


def _f32(key, v):
    return _kv(key, 6, struct.pack("<f", v))


def _str(key, v):
    return _kv(key, 8, _s(v))


def _strs(key, items):
    return _kv(key, 9, struct.pack("<IQ", 8, len(items)) + b"".join(_s(x) for x in items))


def _i32s(key, items):
    return _kv(key, 9, struct.pack("<IQ", 5, len(items)) + np.asarray(items, np.int32).tobytes())


def tensors(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, numpy shape [rows, cols]) in llama.cpp's llama layout."""
    hd = s.hd
    out = [("token_embd.weight", (s.vocab, s.hidden)), ("output_norm.weight", (s.hidden,)),
           ("output.weight", (s.vocab, s.hidden))]
    for i in range(s.layers):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (s.hidden,)), (p + "ffn_norm.weight", (s.hidden,)),
                (p + "attn_q.weight", (s.heads * hd, s.hidden)), (p + "attn_k.weight", (s.kv_heads * hd, s.hidden)),
                (p + "attn_v.weight", (s.kv_heads * hd, s.hidden)), (p + "attn_output.weight", (s.hidden, s.heads * hd)),
                (p + "ffn_gate.weight", (s.ffn, s.hidden)), (p + "ffn_up.weight", (s.ffn, s.hidden)),
                (p + "ffn_down.weight", (s.hidden, s.ffn))]
    return out


def write(path: Path, s: Shape = Shape(), seed: int = 0) -> Path:
    """Write an F16 llama GGUF of shape ``s`` (norms in F32, as llama.cpp's converter writes them)."""
    tokens = ["<s>", "</s>", "t"] + [f"t{i}" for i in range(s.vocab - 3)]
    kvs = [_str("general.architecture", "llama"), _str("general.name", "edgellm-kernel-probe"),
           _u32("general.file_type", 1), _u32("llama.block_count", s.layers), _u32("llama.context_length", s.context),
           _u32("llama.embedding_length", s.hidden), _u32("llama.feed_forward_length", s.ffn),
           _u32("llama.attention.head_count", s.heads), _u32("llama.attention.head_count_kv", s.kv_heads),
           _f32("llama.attention.layer_norm_rms_epsilon", 1e-5), _f32("llama.rope.freq_base", 10000.0),
           _u32("llama.rope.dimension_count", s.hd), _u32("llama.attention.key_length", s.hd),
           _u32("llama.attention.value_length", s.hd),
           _str("tokenizer.ggml.model", "gpt2"), _str("tokenizer.ggml.pre", "default"),
           _strs("tokenizer.ggml.tokens", tokens), _i32s("tokenizer.ggml.token_type", [1] * len(tokens)),
           _strs("tokenizer.ggml.merges", ["t 0"]), _u32("tokenizer.ggml.bos_token_id", 0),
           _u32("tokenizer.ggml.eos_token_id", 1)]
    specs = tensors(s)
    infos, offset, sizes = [], 0, []
    for name, shape in specs:
        ttype, item = (F32, 4) if len(shape) == 1 else (F16, 2)
        nbytes = int(np.prod(shape)) * item
        infos.append(_s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in reversed(shape))
                     + struct.pack("<IQ", ttype, offset))
        sizes.append((shape, ttype, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    head = b"GGUF" + struct.pack("<IQQ", 3, len(specs), len(kvs)) + b"".join(kvs) + b"".join(infos)
    rng = np.random.default_rng(seed)
    tmp = Path(f"{path}.partial")
    with open(tmp, "wb") as f:
        f.write(head + b"\0" * ((-len(head)) % ALIGN))
        for shape, ttype, nbytes in sizes:
            if ttype == F32:
                data = np.ones(shape, np.float32)
            else:
                data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
            f.write(data.tobytes())
            f.write(b"\0" * ((-nbytes) % ALIGN))
    tmp.replace(path)
    return path
