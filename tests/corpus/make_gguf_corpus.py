"""Writes tests/corpus/gguf/*.gguf: tiny GGUF files (a 1-layer, 32-wide llama) whose metadata
aborted llama.cpp (llama-cpp-python 0.3.36: SIGABRT, or SIGFPE) before edgellm's checker refused
them.  Each must now be refused by runtime/gguf_check.read_header; tests/test_native_corpus.py
checks that, and that llama.cpp on its own still dies on it (so the refusal is what matters).

    python tests/corpus/make_gguf_corpus.py      (needs the gguf package: the [export] extra)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent / "gguf"
H, F, V = 32, 64, 64


def base_kv(tokens: list[str]) -> dict:
    return {
        "general.name": ("str", "tiny"),
        "llama.block_count": ("u32", 1), "llama.context_length": ("u32", 128),
        "llama.embedding_length": ("u32", H), "llama.feed_forward_length": ("u32", F),
        "llama.attention.head_count": ("u32", 4), "llama.attention.head_count_kv": ("u32", 4),
        "llama.attention.layer_norm_rms_epsilon": ("f32", 1e-5), "llama.rope.freq_base": ("f32", 10000.0),
        "tokenizer.ggml.model": ("str", "gpt2"), "tokenizer.ggml.pre": ("str", "default"),
        "tokenizer.ggml.tokens": ("strs", tokens), "tokenizer.ggml.token_type": ("i32s", [1] * len(tokens)),
        "tokenizer.ggml.merges": ("strs", ["t 0"]),
        "tokenizer.ggml.bos_token_id": ("u32", 0), "tokenizer.ggml.eos_token_id": ("u32", 1),
    }


def tokens() -> list[str]:
    return ["<s>", "</s>", "t"] + [f"t{i}" for i in range(V - 3)]


def write(path: Path, kv: dict) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for k, (kind, v) in kv.items():
        {"str": w.add_string, "u32": w.add_uint32, "f32": w.add_float32, "bool": w.add_bool,
         "strs": w.add_array, "i32s": w.add_array}[kind](k, v)
    rng = np.random.default_rng(0)
    n = len(kv["tokenizer.ggml.tokens"][1])

    def t(name, *shape):
        data = (rng.standard_normal(shape) * 0.02).astype(np.float16) if len(shape) > 1 else np.ones(shape, np.float32)
        w.add_tensor(name, data)
    t("token_embd.weight", n, H)
    t("output_norm.weight", H)
    t("output.weight", n, H)
    t("blk.0.attn_norm.weight", H)
    t("blk.0.ffn_norm.weight", H)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        t(f"blk.0.{name}.weight", H, H)
    t("blk.0.ffn_gate.weight", F, H)
    t("blk.0.ffn_up.weight", F, H)
    t("blk.0.ffn_down.weight", H, F)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def variants() -> dict[str, dict]:
    """name -> the metadata of a file that aborted llama.cpp (each one change from a valid file)."""
    def with_(**changes):
        kv = base_kv(tokens())
        for key, value in changes.items():
            kv[key.replace("__", ".")] = value
        return kv
    dup = tokens()
    dup[10] = dup[11]
    empty = tokens()
    empty[5], empty[6] = "", "[EMPTY_5]"
    return {
        "duplicate-token-texts": {**base_kv(dup)},
        "empty-token-named-like-another": {**base_kv(empty)},
        "expert-count-1e6": with_(llama__expert_count=("u32", 10 ** 6)),
        "experts-used-without-experts": with_(llama__expert_used_count=("u32", 5)),
        "block-count-1e5": with_(llama__block_count=("u32", 100_000)),
        "nextn-layers-past-block-count": with_(llama__nextn_predict_layers=("u32", 5)),
        "rms-eps-nan": with_(llama__attention__layer_norm_rms_epsilon=("f32", float("nan"))),
        "rms-eps-negative": with_(llama__attention__layer_norm_rms_epsilon=("f32", -1.0)),
        "sentencepiece-model-on-bpe-vocab": with_(tokenizer__ggml__model=("str", "llama")),
        "unknown-rope-scaling-type": with_(llama__rope__scaling__type=("str", "zzz")),
    }


def main() -> int:
    HERE.mkdir(exist_ok=True)
    for old in HERE.glob("*.gguf"):
        old.unlink()
    write(HERE.parent / "valid.gguf", base_kv(tokens()))
    for name, kv in variants().items():
        write(HERE / f"{name}.gguf", kv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
