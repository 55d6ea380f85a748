"""Per-architecture GGUF conversion: hyperparameter keys, tensor names, and the few tensors whose
layout differs between Hugging Face and llama.cpp.

Names come from the ``gguf`` package's tensor-name tables (``TensorNameMap``); one small class per
family sets the keys llama.cpp reads for it and any transform (llama's rotary q/k permutation,
GPT-2's transposed Conv1D weights).  Registered by Hugging Face ``model_type``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Iterator

import numpy as np

from edgellm.errors import BadInput
from edgellm.models.config import ModelConfig

REGISTRY: dict[str, type["GgufArch"]] = {}


def register(cls):
    for t in cls.model_types:
        REGISTRY[t] = cls
    return cls


def for_model(model: ModelConfig) -> "GgufArch":
    cls = REGISTRY.get(model.model_type)
    if cls is None:
        raise BadInput(f"{model.name}: GGUF export does not support '{model.model_type}' yet; "
                       f"supported: {', '.join(sorted(REGISTRY))}")
    return cls(model)


class GgufArch:
    model_types: ClassVar[tuple[str, ...]] = ()
    arch_name: ClassVar[str] = "llama"          # gguf.MODEL_ARCH member name, lower case
    # Hugging Face tensors that are buffers or duplicates, never written
    skip_suffixes: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)

    def __init__(self, model: ModelConfig):
        import gguf

        self.model = model
        self.cfg = model.raw
        self.arch = getattr(gguf.MODEL_ARCH, self.arch_name.upper())
        self.gguf_arch_name = gguf.MODEL_ARCH_NAMES[self.arch]
        self.names = gguf.get_tensor_name_map(self.arch, model.n_layers)

    # -- metadata -----------------------------------------------------------------------------
    def add_metadata(self, w) -> None:
        m, c = self.model, self.cfg
        w.add_context_length(m.max_context)
        w.add_embedding_length(m.hidden)
        w.add_block_count(m.n_layers)
        w.add_feed_forward_length(m.ffn)
        w.add_head_count(m.n_heads)
        w.add_head_count_kv(m.n_kv_heads)
        w.add_vocab_size(m.vocab)
        self.add_norm_eps(w)
        w.add_rope_freq_base(float(c.get("rope_theta", 10000.0)))
        w.add_rope_dimension_count(m.head_dim)
        if m.head_dim != m.hidden // m.n_heads:
            w.add_key_length(m.head_dim)
            w.add_value_length(m.head_dim)

    def add_norm_eps(self, w) -> None:
        w.add_layer_norm_rms_eps(float(self.cfg.get("rms_norm_eps", 1e-6)))

    # -- tensors ------------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of a checkpoint tensor; None when it is not written."""
        if hf_name.endswith(self.skip_suffixes):
            return None
        if hf_name == "lm_head.weight" and self.model.tied_embeddings:
            return None
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise BadInput(f"{self.model.name}: checkpoint tensor {hf_name!r} has no GGUF name for "
                           f"{self.gguf_arch_name}; is the checkpoint complete and of this architecture?")
        return name

    def transform(self, hf_name: str, gguf_name: str, data: np.ndarray) -> np.ndarray | None:
        """The tensor as llama.cpp lays it out; None when it needs no change (then it may be
        streamed in row chunks instead of read whole)."""
        return None

    def needs_transform(self, hf_name: str, gguf_name: str) -> bool:
        return False

    def general_name(self, name: str, tokens: list[str]) -> str | None:
        """``general.name`` for the file, or None to leave it out."""
        return name

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(())


def _permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face stores rotary q/k halves apart; llama.cpp's llama layout interleaves them
    (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@register
class Llama(GgufArch):
    model_types = ("llama", "mistral")
    arch_name = "llama"

    def transform(self, hf_name: str, gguf_name: str, data: np.ndarray) -> np.ndarray | None:
        if gguf_name.endswith("attn_q.weight"):
            return _permute_rotary(data, self.model.n_heads)
        if gguf_name.endswith("attn_k.weight"):
            return _permute_rotary(data, self.model.n_kv_heads)
        return None

    def needs_transform(self, hf_name: str, gguf_name: str) -> bool:
        return gguf_name.endswith(("attn_q.weight", "attn_k.weight"))

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Llama 3.1+ rope scaling as a frequency-factor table (convert_hf_to_gguf.py)."""
        rope = self.cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) != "llama3":
            return
        # float32 arithmetic throughout, as the converter's torch code does, for identical bytes
        f32 = np.float32
        base, dim = f32(self.cfg.get("rope_theta", 10000.0)), self.model.head_dim
        factor = f32(rope.get("factor", 8.0))
        low, high = f32(rope.get("low_freq_factor", 1.0)), f32(rope.get("high_freq_factor", 4.0))
        old = f32(rope.get("original_max_position_embeddings", 8192))
        factors = []
        for freq in f32(1.0) / base ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)):
            wavelen = f32(2 * math.pi) / freq
            if wavelen < old / high:
                factors.append(f32(1.0))
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(f32(1.0) / ((f32(1.0) - smooth) / factor + smooth))
        yield "rope_freqs.weight", np.array(factors, dtype=np.float32)


@register
class Qwen2(GgufArch):
    model_types = ("qwen2",)
    arch_name = "qwen2"


@register
class Qwen3(GgufArch):
    model_types = ("qwen3",)
    arch_name = "qwen3"


@register
class GPT2(GgufArch):
    model_types = ("gpt2",)
    arch_name = "gpt2"
    skip_suffixes = (".attn.bias", ".attn.masked_bias")
    conv1d = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")

    def add_metadata(self, w) -> None:
        m = self.model
        w.add_context_length(m.max_context)
        w.add_embedding_length(m.hidden)
        w.add_block_count(m.n_layers)
        w.add_feed_forward_length(m.ffn)
        w.add_head_count(m.n_heads)
        w.add_vocab_size(m.vocab)
        w.add_layer_norm_eps(float(self.cfg.get("layer_norm_epsilon", 1e-5)))

    def gguf_name(self, hf_name: str) -> str | None:
        if hf_name == "lm_head.weight":
            return None                                  # always tied to wte
        return super().gguf_name(hf_name.removeprefix("transformer."))

    def needs_transform(self, hf_name: str, gguf_name: str) -> bool:
        return hf_name.endswith(self.conv1d)

    def transform(self, hf_name: str, gguf_name: str, data: np.ndarray) -> np.ndarray | None:
        return np.ascontiguousarray(data.T) if hf_name.endswith(self.conv1d) else None


@register
class Phi3(GgufArch):
    """Phi-3/3.5 mini: fused qkv and gate_up, NEOX rotary (no permutation); long-context variants
    carry long/short rope factor tables (convert_hf_to_gguf.py Phi3MiniModel)."""
    model_types = ("phi3",)
    arch_name = "phi3"

    def _rope(self) -> dict:
        return self.cfg.get("rope_scaling") or {}

    def general_name(self, name: str, tokens: list[str]) -> str | None:
        # llama.cpp (llama-vocab.cpp) adjusts </s>, <unk>, <s> and <|endoftext|> when general.name
        # contains "phi3" and aborts if the vocabulary lacks them (retrained BPE vocabularies do)
        needed = {"</s>", "<unk>", "<s>", "<|endoftext|>"}
        if any(k in name.lower() for k in ("phi3", "phi-3")) and not needed <= set(tokens):
            return None
        return name

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        c, m = self.cfg, self.model
        orig = c.get("original_max_position_embeddings") or m.max_context
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_sliding_window(c.get("sliding_window") or 0)
        rope = self._rope()
        if rope.get("long_factor"):
            kind = (rope.get("rope_type") or rope.get("type") or "").lower()
            if kind not in ("su", "longrope"):
                raise BadInput(f"{m.name}: rope scaling '{kind}' is not supported for phi3 export")
            scale = m.max_context / orig
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        rope = self._rope()
        if rope.get("long_factor"):
            yield "rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32)
            yield "rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32)


class _GemmaNorms(GgufArch):
    """Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by w, so the converter adds 1."""

    def needs_transform(self, hf_name: str, gguf_name: str) -> bool:
        return hf_name.endswith("norm.weight")

    def transform(self, hf_name: str, gguf_name: str, data: np.ndarray) -> np.ndarray | None:
        return data + 1.0 if hf_name.endswith("norm.weight") else None

    def gguf_name(self, hf_name: str) -> str | None:
        if hf_name == "lm_head.weight":
            return None                                  # Gemma always ties the head
        return super().gguf_name(hf_name)

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        w.add_key_length(self.model.head_dim)
        w.add_value_length(self.model.head_dim)


@register
class Gemma(_GemmaNorms):
    model_types = ("gemma",)
    arch_name = "gemma"


@register
class Gemma2(_GemmaNorms):
    model_types = ("gemma2",)
    arch_name = "gemma2"

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        c = self.cfg
        w.add_attn_logit_softcapping(float(c.get("attn_logit_softcapping") or 0.0))
        w.add_final_logit_softcapping(float(c.get("final_logit_softcapping") or 0.0))
        w.add_sliding_window(int(c.get("sliding_window") or 0))


@register
class Gemma3(_GemmaNorms):
    model_types = ("gemma3_text", "gemma3")
    arch_name = "gemma3"

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        c = self.cfg
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        if c.get("sliding_window_pattern") != 1 and c.get("sliding_window"):
            w.add_sliding_window(int(c["sliding_window"]))
        rope = c.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) == "linear":
            import gguf
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
