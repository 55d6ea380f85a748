"""Gemma 1/2/3: RMSNorm of (1 + w), a tied head, GELU (tanh) MLP, the embedding scaled by
sqrt(hidden); Gemma 2 adds post-norms, logit soft-capping and alternating sliding windows; Gemma 3
q/k norms and five windowed layers of every six."""

from __future__ import annotations

import math

from edgellm.models.families.base import Family
from edgellm.models.families.registry import register


@register
class Gemma(Family):
    """The static NPU graph has no GELU yet.  A narrower student's embedding is multiplied by
    sqrt(its own hidden size): distillation trains from there."""
    model_types = ("gemma",)
    gguf_arch = "gemma"
    default_tied = True
    always_tied = True
    norm_offset = 1.0
    explicit_head_dims = True
    activation = "gelu_tanh"
    k_activation = "hidden_act"             # Gemma 1's; transformers reads its legacy "gelu" as the tanh form
    activation_aliases = frozenset({"gelu"})
    supports = frozenset({"gguf", "onnx", "distill"})

    @property
    def embed_scale(self) -> float | None:
        return math.sqrt(self.model.hidden)

    @property
    def attention_scale(self) -> float:
        return float(self.cfg.get("query_pre_attn_scalar", self.model.head_dim)) ** -0.5


@register
class Gemma2(Gemma):
    model_types = ("gemma2",)
    gguf_arch = "gemma2"
    post_norms = True
    sliding_window_attention = True
    supports = frozenset({"gguf", "onnx"})
    k_activation = "hidden_activation"      # Gemma 2 and 3 read this key (no legacy alias)
    activation_aliases = frozenset()

    def hf_layer(self, i: int) -> dict[str, str]:
        p = f"model.layers.{i}."
        return {**super().hf_layer(i), "mlp_norm": p + "pre_feedforward_layernorm.weight",
                "post_attn_norm": p + "post_attention_layernorm.weight",
                "post_mlp_norm": p + "post_feedforward_layernorm.weight"}

    @property
    def attn_softcap(self) -> float | None:
        return self.cfg.get("attn_logit_softcapping") or None

    @property
    def final_softcap(self) -> float | None:
        return self.cfg.get("final_logit_softcapping") or None

    def is_sliding(self, layer: int) -> bool:
        return layer % 2 == 0

    def add_metadata(self, w) -> None:
        super().add_metadata(w)
        c = self.cfg
        w.add_attn_logit_softcapping(float(c.get("attn_logit_softcapping") or 0.0))
        w.add_final_logit_softcapping(float(c.get("final_logit_softcapping") or 0.0))
        w.add_sliding_window(int(c.get("sliding_window") or 0))


@register
class Gemma3(Gemma2):
    """Gemma 3 text models."""
    model_types = ("gemma3_text", "gemma3")
    gguf_arch = "gemma3"
    qk_norm = True

    def is_sliding(self, layer: int) -> bool:
        pattern = self.cfg.get("sliding_window_pattern") or 6
        return (layer + 1) % pattern != 0

    def rotary_kind(self, i: int) -> str:
        windowed = self.model.windows and self.model.windows[i] is not None
        return "local" if windowed and self.cfg.get("rope_local_base_freq") else "global"

    def add_metadata(self, w) -> None:
        Gemma.add_metadata(self, w)
        c = self.cfg
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        if c.get("sliding_window_pattern") != 1 and c.get("sliding_window"):
            w.add_sliding_window(int(c["sliding_window"]))
