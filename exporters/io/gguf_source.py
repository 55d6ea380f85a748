"""A llama-architecture GGUF as a Hugging Face folder: dequantized weights, its tokenizer and chat
template, a config transformers reads.

What for: the suite's real published model (``exporters/real_model.py``) ships only as a GGUF.
The weights are dequantized with gguf-py (the reference implementation of ggml's block formats)
and the rotary permutation llama.cpp's converter applies to q/k is undone, so transformers runs the
network llama.cpp runs.  The tokenizer is rebuilt from the GGUF's vocabulary, merges and
pre-tokenizer name with the ``tokenizers`` library.  The file is a stranger's: its header is read
with the runtime's bounded checker first, and only the layout named here is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgellm.errors import BadInput

# llama.cpp's pre-tokenizer names (llama-vocab.cpp) -> the Hugging Face pre-tokenizers that split alike
PRE_TOKENIZERS = {
    "smollm": ("digits", "byte_level"),     # \p{N} alone, then GPT-2's byte-level regex
    "gpt-2": ("byte_level",),
    "gpt2": ("byte_level",),
}
CONTROL = 3                                 # llama.cpp's token type of special tokens

NAMES = {                                   # GGUF name -> Hugging Face name, per layer ({i})
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _shortest(x) -> float:
    """A float32 header value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of llama.cpp's q/k permutation (gguf_hooks.permute_rotary): interleaved rotary
    halves back to Hugging Face's split halves."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in NAMES:
        return f"model.layers.{int(parts[1])}.{NAMES[parts[2]]}"
    raise BadInput(f"GGUF tensor {gguf_name[:80]!r} is not one of the llama layout's")


def tokenizer_json(tokens: list[str], types: list[int], merges: list[str], pre: str) -> str:
    """A tokenizer.json of the GGUF's byte-level BPE vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if pre not in PRE_TOKENIZERS:
        raise BadInput(f"GGUF pre-tokenizer {pre[:40]!r} is not one edgellm converts "
                       f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise BadInput(f"GGUF merge {m[:40]!r} is not two tokens")
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs, fuse_unk=False))
    steps = {"digits": pre_tokenizers.Digits(individual_digits=True),
             "byte_level": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)}
    tok.pre_tokenizer = pre_tokenizers.Sequence([steps[s] for s in PRE_TOKENIZERS[pre]])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    return tok.to_str()


def gguf_to_hf(gguf_path: Path, out: Path, dtype: str = "float32", progress=lambda i, n: None) -> Path:
    """Write ``out`` (a new folder) as the Hugging Face form of the llama-architecture GGUF."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file
    from transformers import LlamaConfig

    from edgellm.runtime.gguf_check import read_header

    read_header(Path(gguf_path))                   # the bounded checker first: a hostile header stops here
    r = GGUFReader(str(gguf_path))
    arch = _field(r, "general.architecture")
    if arch != "llama" or _field(r, "tokenizer.ggml.model") != "gpt2":
        raise BadInput(f"{gguf_path}: only llama-architecture GGUFs with a byte-level BPE vocabulary convert "
                       f"(this one: {str(arch)[:40]}, {str(_field(r, 'tokenizer.ggml.model'))[:40]})")
    k = lambda name, default=None: _field(r, f"llama.{name}", default)        # noqa: E731
    n_head, n_kv = int(k("attention.head_count")), int(k("attention.head_count_kv"))
    hidden, layers = int(k("embedding_length")), int(k("block_count"))
    head_dim = int(k("attention.key_length", hidden // n_head))
    if int(k("rope.dimension_count", head_dim)) != head_dim:
        raise BadInput(f"{gguf_path}: its rotary embedding turns {int(k('rope.dimension_count'))} of {head_dim} "
                       "head dimensions; a partial rotary llama GGUF does not convert")
    tokens = list(_field(r, "tokenizer.ggml.tokens"))
    tensors = {t.name: t for t in r.tensors}
    cfg = LlamaConfig(
        vocab_size=len(tokens), hidden_size=hidden, intermediate_size=int(k("feed_forward_length")),
        num_hidden_layers=layers, num_attention_heads=n_head, num_key_value_heads=n_kv,
        head_dim=head_dim,
        max_position_embeddings=int(k("context_length")), rms_norm_eps=_shortest(k("attention.layer_norm_rms_epsilon")),
        rope_theta=float(k("rope.freq_base", 10000.0)), tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=_field(r, "tokenizer.ggml.bos_token_id"), eos_token_id=_field(r, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(r, "tokenizer.ggml.padding_token_id"), hidden_act="silu", attention_bias=False,
        mlp_bias=False, architectures=["LlamaForCausalLM"])
    out = Path(out)
    out.mkdir(parents=True)
    cfg.save_pretrained(str(out))
    weights: dict[str, np.ndarray] = {}
    for i, t in enumerate(r.tensors, 1):
        name = hf_name(t.name)
        w = dequantize(t.data, t.tensor_type).astype(dtype)
        shape = tuple(int(x) for x in reversed(t.shape))     # GGUF lists ne0 first; numpy rows first
        w = w.reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rotary(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rotary(w, n_kv)
        weights[name] = np.ascontiguousarray(w)
        progress(i, len(r.tensors))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})

    types = [int(x) for x in _field(r, "tokenizer.ggml.token_type")]
    (out / "tokenizer.json").write_text(tokenizer_json(tokens, types, list(_field(r, "tokenizer.ggml.merges")),
                                                       str(_field(r, "tokenizer.ggml.pre"))))
    name = lambda key: tokens[int(_field(r, key))] if _field(r, key) is not None else None     # noqa: E731
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"), "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"), "add_bos_token": bool(_field(r, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_position_embeddings,
        "chat_template": _field(r, "tokenizer.chat_template")}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}) + "\n")
    return out
