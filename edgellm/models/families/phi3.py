"""Phi-3/3.5 mini: fused qkv and gate_up, NEOX rotary (no permutation); long-context variants
carry long/short rope factor tables (convert_hf_to_gguf.py Phi3MiniModel)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edgellm.errors import BadInput
from edgellm.models.families.base import Family
from edgellm.models.families.registry import register
from edgellm.models.families.rope import longrope_attention_factor, longrope_factors, rope_kind
from edgellm.models.tensors import TensorSpec


@register
class Phi3(Family):
    """ONNX refuses long-rope scaling; pruning keeps matching rows of the fused projections."""
    model_types = ("phi3",)
    gguf_arch = "phi3"
    fused_qkv = True
    fused_gate_up = True
    supports = frozenset({"gguf", "onnx", "onnx-npu", "distill"})
    gguf_rope_kinds = (None, "default", "linear", "longrope", "su")
    gguf_partial_rotary = True          # Phi-4-mini turns 96 of 128 (llama.cpp's n_rot)

    def shrunk(self, layers: int, width: float) -> dict:
        """llama.cpp's phi3 graph sizes the query as the hidden size: a student keeps
        hidden = heads x head size, so its width moves in whole key/value groups."""
        cfg = super().shrunk(layers, width)
        cfg[self.k_hidden] = cfg[self.k_heads] * cfg["head_dim"]
        return cfg

    def student_problem(self, cfg: dict) -> str | None:
        heads, head_dim = cfg[self.k_heads], cfg.get("head_dim") or cfg[self.k_hidden] // cfg[self.k_heads]
        if cfg[self.k_hidden] != heads * head_dim:
            return (f"a Phi-3 student's hidden size must be its heads x head size ({heads} x {head_dim} = "
                    f"{heads * head_dim}), as llama.cpp's phi3 graph requires; not {cfg[self.k_hidden]}")
        return None

    def global_extras(self, head_dim: int) -> list[TensorSpec]:
        if rope_kind(self.cfg) in ("longrope", "su"):
            half = self.rotary_dim // 2
            return [TensorSpec("rope_factors_long.weight", half, is_param=False),
                    TensorSpec("rope_factors_short.weight", half, is_param=False)]
        return []

    # -- GGUF ---------------------------------------------------------------------------------
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
            w.add_rope_scaling_attn_factors(longrope_attention_factor(self.cfg, m.max_context))

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        if self._rope().get("long_factor"):
            long, short = longrope_factors(self.cfg, self.rotary_dim, self.name)
            yield "rope_factors_long.weight", long
            yield "rope_factors_short.weight", short

    # -- ONNX ---------------------------------------------------------------------------------
    def qkv(self, read, i: int):
        return read(f"model.layers.{i}.self_attn.qkv_proj.weight"), None

    def gate_up(self, read, i: int):
        w = read(f"model.layers.{i}.mlp.gate_up_proj.weight")
        half = w.shape[0] // 2
        return w[:half], w[half:]
