"""The GGUF metadata llama.cpp asserts on, checked before llama.cpp sees the file.

llama.cpp turns most bad metadata into a load error, but some values reach a ``GGML_ASSERT`` or an
uncaught C++ exception, which abort the whole process (exit 134, nothing on stderr from
llama-cpp-python).  Each rule below prevents one such abort in the llama.cpp that
llama-cpp-python 0.3.36 vendors (src/llama-model.cpp ``load_hparams``, src/llama-vocab.cpp
``load`` and tokenization, the graph builders, ggml-cpu/ops.cpp norms and rope); the crafted files
that hit them are in tests/corpus/gguf/.  Rules are about meaning, not layout (runtime/gguf_check.py
checks the bytes first).
"""

from __future__ import annotations

import math
import re
from typing import Callable

from edgellm.runtime.gguf_header import GgufHeader, Skipped

MAX_LAYERS = 512            # LLAMA_MAX_LAYERS
MAX_EXPERTS = 1024          # LLAMA_MAX_EXPERTS
ROPE_SCALING = ("none", "linear", "yarn", "longrope")
TOKENIZERS = ("llama", "gpt2")     # SentencePiece and byte-level BPE: what edgellm writes and runs
# architectures whose graph asserts value head size == key head size == rotary dimensions
# architectures whose layers may not attend (0 KV heads there): LFM2's short-convolution layers
NO_KV_LAYERS = ("lfm2", "lfm2moe")
ROPE_IS_HEAD = ("llama", "qwen2", "qwen3", "smollm3", "granite")
V_IS_K = ROPE_IS_HEAD + ("phi3", "gpt2")
BLOCK = re.compile(r"^blk\.(\d+)\.")

Fail = Callable[[str], Exception]


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, (bool, Skipped))


def _per_layer(meta: dict, key: str, n_layer: int, fail: Fail, default=None) -> list[int] | None:
    """A scalar or per-layer array key as one value per layer (None when absent)."""
    v = meta.get(key, default)
    if v is None:
        return None
    if _int(v):
        return [v] * n_layer
    if isinstance(v, list) and len(v) == n_layer and all(_int(x) for x in v):
        return v
    raise fail(f"{key} must be a whole number or one per layer ({n_layer}), not {_shown(v)}")


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:60] + "..."


def _split(h: GgufHeader) -> bool:
    count = h.metadata.get("split.count", 1)
    return _int(count) and count > 1


def check_metadata(h: GgufHeader, fail: Fail) -> None:
    meta = h.metadata
    for key, v in meta.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise fail(f"{key} is {v}: metadata numbers must be finite")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise fail("no general.architecture")
    n_layer = _layers(h, arch, fail)
    _experts(h, arch, n_layer, fail)
    _heads(meta, arch, n_layer, fail)
    _norms_and_rope(meta, arch, fail)
    _windows(meta, arch, n_layer, fail)
    _vocabulary(meta, h, fail)


def _layers(h: GgufHeader, arch: str, fail: Fail) -> int:
    key = f"{arch}.block_count"
    n = h.metadata.get(key)
    if not _int(n) or not 1 <= n <= MAX_LAYERS:
        raise fail(f"{key} is {_shown(n)}; llama.cpp takes 1 to {MAX_LAYERS} layers")
    present = {int(m[1]) for t in h.tensors if (m := BLOCK.match(t.name))}
    if present and max(present) + 1 != n and not _split(h):
        raise fail(f"{key} says {n} layers but the file has tensors for {max(present) + 1}")
    nextn = h.metadata.get(f"{arch}.nextn_predict_layers", 0)
    if not _int(nextn) or not 0 <= nextn <= n:
        raise fail(f"{arch}.nextn_predict_layers is {_shown(nextn)}, more than the {n} layers")
    return n


def _experts(h: GgufHeader, arch: str, n_layer: int, fail: Fail) -> None:
    meta = h.metadata
    n = meta.get(f"{arch}.expert_count", 0)
    if not _int(n) or not 0 <= n <= MAX_EXPERTS:
        raise fail(f"{arch}.expert_count is {_shown(n)}; llama.cpp takes 0 to {MAX_EXPERTS}")
    used = max(_per_layer(meta, f"{arch}.expert_used_count", n_layer, fail) or [0])
    groups = meta.get(f"{arch}.expert_group_count", 0)
    group_used = meta.get(f"{arch}.expert_group_used_count", 0)
    if not (_int(groups) and _int(group_used) and groups >= 0 and group_used >= 0):
        raise fail(f"{arch}.expert_group_count/expert_group_used_count must be whole numbers")
    exps = [t for t in h.tensors if "_exps" in t.name]
    if _split(h):                      # a part of llama.cpp's split format: the tensors are spread
        exps = exps or [None]
    if n == 0:
        if used or groups:
            raise fail(f"{arch}.expert_used_count/expert_group_count are set but expert_count is 0")
        if exps and exps[0] is not None:
            raise fail(f"tensor {exps[0].name!r} holds experts but {arch}.expert_count is 0")
        return
    if not 0 < used <= n:
        raise fail(f"{arch}.expert_used_count is {used}; it must be 1 to expert_count ({n})")
    if groups >= n or (groups > 1 and (n % groups or not 0 < group_used < groups)):
        raise fail(f"{arch}.expert_group_count {groups} / expert_group_used_count {group_used} do not "
                   f"divide {n} experts")
    if not exps:
        raise fail(f"{arch}.expert_count is {n} but the file has no expert tensors")
    for t in (t for t in exps if t is not None):
        if len(t.shape) < 3 or t.shape[2] != n:
            raise fail(f"tensor {t.name!r} has shape {list(t.shape)}, not {n} experts")


def _heads(meta: dict, arch: str, n_layer: int, fail: Fail) -> None:
    heads = _per_layer(meta, f"{arch}.attention.head_count", n_layer, fail)
    if heads is None:
        return
    kv = _per_layer(meta, f"{arch}.attention.head_count_kv", n_layer, fail) or heads
    for i, (q, k) in enumerate(zip(heads, kv)):
        if k == 0 and arch in NO_KV_LAYERS:
            continue                   # a convolution layer of a hybrid: it does not attend
        if q < 1 or k < 1 or q % k:
            raise fail(f"layer {i}: {q} attention heads over {k} KV heads (each must be at least 1, "
                       "and the KV heads must divide the heads)")
    if arch in NO_KV_LAYERS and len({k == 0 for k in kv}) < 2:
        # llama.cpp aborts on a hybrid with no convolution layer (its recurrent cache has no buffer)
        raise fail(f"{arch}: every layer is {'a convolution' if kv[0] == 0 else 'an attention'} layer; "
                   "llama.cpp needs both kinds")
    embd = meta.get(f"{arch}.embedding_length")
    if not _int(embd) or embd < 1:
        raise fail(f"{arch}.embedding_length is {_shown(embd)}")
    k_len = meta.get(f"{arch}.attention.key_length", embd // heads[0])
    v_len = meta.get(f"{arch}.attention.value_length", k_len)
    rot = meta.get(f"{arch}.rope.dimension_count", k_len)
    for key, v in (("attention.key_length", k_len), ("attention.value_length", v_len),
                   ("rope.dimension_count", rot)):
        if not _int(v) or v < 0 or (key != "rope.dimension_count" and v < 1):
            raise fail(f"{arch}.{key} is {_shown(v)}")
    if arch in V_IS_K and v_len != k_len:
        raise fail(f"{arch}: value head size {v_len} differs from key head size {k_len}")
    if arch in ROPE_IS_HEAD and rot != k_len:
        raise fail(f"{arch}: rope.dimension_count {rot} differs from the head size {k_len}")
    rot_swa = meta.get(f"{arch}.rope.dimension_count_swa", rot)
    k_swa = meta.get(f"{arch}.attention.key_length_swa", k_len)
    for r, k in ((rot, k_len), (rot_swa, k_swa)):
        if not (_int(r) and _int(k)) or r % 2 or r > k:
            raise fail(f"{arch}: rotary dimensions {_shown(r)} must be even and at most the head size {_shown(k)}")


def _norms_and_rope(meta: dict, arch: str, fail: Fail) -> None:
    for key, v in meta.items():
        if key.startswith(f"{arch}.") and key.endswith("epsilon"):
            if not isinstance(v, float) or not v > 0:
                raise fail(f"{key} is {_shown(v)}; a norm's epsilon must be a number above 0")
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind is not None and kind not in ROPE_SCALING:
        raise fail(f"{arch}.rope.scaling.type {_shown(kind)} is not one of {', '.join(ROPE_SCALING)}")


def _windows(meta: dict, arch: str, n_layer: int, fail: Fail) -> None:
    """Gemma 2 (always) and Gemma 3 (with a sliding window) need some windowed layers."""
    window = meta.get(f"{arch}.attention.sliding_window", 0)
    if arch not in ("gemma2", "gemma3") or (arch == "gemma3" and not window):
        return
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if pattern == 1 or (isinstance(pattern, list) and not any(pattern[:n_layer])):
        raise fail(f"{arch}.attention.sliding_window_pattern {_shown(pattern)} marks no windowed layer")


def _vocabulary(meta: dict, h: GgufHeader, fail: Fail) -> None:
    model = meta.get("tokenizer.ggml.model")
    if model not in TOKENIZERS:
        raise fail(f"tokenizer.ggml.model {_shown(model)} is not one edgellm runs ({', '.join(TOKENIZERS)})")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise fail("tokenizer.ggml.tokens is missing or not a list of strings")
    n = len(tokens)
    texts = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]      # as llama.cpp names them
    if len(set(texts)) != n:
        seen: set[str] = set()
        dup = next(t for t in texts if t in seen or seen.add(t))
        raise fail(f"token text {dup[:40]!r} appears more than once in the vocabulary")
    name = meta.get("general.name")
    phi3_tokens = {"</s>", "<unk>", "<s>", "<|endoftext|>"}
    if (meta.get("general.architecture") == "phi3" and isinstance(name, str)
            and any(k in name.lower() for k in ("phi3", "phi-3")) and not phi3_tokens <= set(tokens)):
        # llama-vocab.cpp looks these up (unchecked) when general.name says Phi-3
        raise fail(f"general.name {name[:40]!r} makes llama.cpp look up {', '.join(sorted(phi3_tokens))}, "
                   "and this vocabulary lacks some")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        v = meta.get(key)
        if v is not None and (len(v) if isinstance(v, list) else int(v) if isinstance(v, Skipped) else -1) != n:
            raise fail(f"{key} does not have one entry per token ({n})")
    if model == "llama":
        have = set(tokens)
        missing = [b for b in range(256) if f"<0x{b:02X}>" not in have and not (b < 0x80 and chr(b) in have)]
        if missing:
            raise fail(f"a SentencePiece tokenizer (tokenizer.ggml.model 'llama') needs a token for every "
                       f"byte, and this vocabulary has none for {len(missing)} of them (<0x{missing[0]:02X}>, ...): "
                       "is it a BPE vocabulary?")
    elif "tokenizer.ggml.merges" not in meta:
        raise fail("a BPE tokenizer (tokenizer.ggml.model 'gpt2') needs tokenizer.ggml.merges")
    # llama.cpp's defaults: SentencePiece adds BOS (id 1; EOS is 2), BPE does not (both 11); an id
    # outside the vocabulary is ignored in favour of the default, which is dropped when it is too
    for what, add_default, id_default in (("bos", model == "llama", 1 if model == "llama" else 11),
                                          ("eos", False, 2 if model == "llama" else 11)):
        add = meta.get(f"tokenizer.ggml.add_{what}_token", add_default)
        tid = meta.get(f"tokenizer.ggml.{what}_token_id")
        effective = tid if _int(tid) and 0 <= tid < n else id_default if id_default < n else None
        if add and effective is None:
            raise fail(f"tokenizer.ggml.add_{what}_token is set but there is no {what} token "
                       f"(tokenizer.ggml.{what}_token_id {_shown(tid)}, {n} tokens)")
