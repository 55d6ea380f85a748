"""GPT-2: LayerNorm with bias, biased linears, learned positions, a fused qkv, a tied head, and
Conv1D weights stored transposed."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgellm.models.families.base import Family
from edgellm.models.families.registry import register
from edgellm.models.tensors import TensorSpec


@register
class GPT2(Family):
    """ONNX: LayerNorm, learned positions, attention without rotary, an ungated GELU MLP."""
    model_types = ("gpt2",)
    gguf_arch = "gpt2"
    k_hidden, k_layers, k_heads, k_context = "n_embd", "n_layer", "n_head", "n_positions"
    default_tied = True
    always_tied = True
    fused_qkv = True
    gated_ffn = False
    supports = frozenset({"gguf", "onnx"})
    rotary = False
    activation = "gelu_tanh"           # gelu_new
    k_activation = "activation_function"
    layer_norm = True
    embed = "transformer.wte.weight"
    position_embed = "transformer.wpe.weight"
    final_norm = "transformer.ln_f.weight"
    skip_suffixes = (".attn.bias", ".attn.masked_bias")
    conv1d = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")

    # -- shape --------------------------------------------------------------------------------
    def ffn_size(self, hidden: int) -> int:
        return self.cfg.get("n_inner") or 4 * hidden

    def scale_ffn(self, cfg: dict[str, Any], width: float) -> None:
        cfg["n_inner"] = max(256, round(self.ffn_size(self.need("n_embd")) * width / 256) * 256)

    def global_extras(self, head_dim: int) -> list[TensorSpec]:
        return [TensorSpec("position_embd.weight", self.need("n_embd"), self.need("n_positions"))]

    def layer_tensors(self, p, hidden, q, kv, head_dim, ffn) -> list[TensorSpec]:
        t = super().layer_tensors(p, hidden, q, kv, head_dim, ffn)
        biases = {"attn_norm": hidden, "attn_qkv": 3 * hidden, "attn_output": hidden,
                  "ffn_norm": hidden, "ffn_up": ffn, "ffn_down": hidden}
        return t + [TensorSpec(f"{p}{k}.bias", n) for k, n in biases.items()]

    def output_norm_extras(self, hidden: int) -> list[TensorSpec]:
        return [TensorSpec("output_norm.bias", hidden)]

    # -- GGUF ---------------------------------------------------------------------------------
    @property
    def norm_eps(self) -> float:
        return float(self.cfg.get("layer_norm_epsilon", 1e-5))

    def add_norm_eps(self, w) -> None:
        w.add_layer_norm_eps(self.norm_eps)

    def gguf_name(self, hf_name: str) -> str | None:
        if hf_name == "lm_head.weight":
            return None                                  # always tied to wte
        return super().gguf_name(hf_name.removeprefix("transformer."))

    def needs_transform(self, hf_name: str, gguf_name: str) -> bool:
        return hf_name.endswith(self.conv1d)

    def transform(self, hf_name: str, gguf_name: str, data: np.ndarray) -> np.ndarray | None:
        return np.ascontiguousarray(data.T) if hf_name.endswith(self.conv1d) else None

    # -- ONNX ---------------------------------------------------------------------------------
    def hf_layer(self, i: int) -> dict[str, str]:
        p = f"transformer.h.{i}."
        return {"attn_norm": p + "ln_1.weight", "o": p + "attn.c_proj", "mlp_norm": p + "ln_2.weight",
                "up": p + "mlp.c_fc", "down": p + "mlp.c_proj"}

    def calibration_sources(self, i: int, part: str) -> list[str]:
        p = f"transformer.h.{i}."
        return [{"qkv": p + "attn.c_attn", "o": p + "attn.c_proj", "up": p + "mlp.c_fc",
                 "down": p + "mlp.c_proj"}[part] + ".weight"]

    def linear(self, read, name: str) -> np.ndarray:
        return np.ascontiguousarray(read(name + ".weight").T)      # Conv1D stores [in, out]

    def qkv(self, read, i: int):
        p = f"transformer.h.{i}.attn.c_attn"
        return self.linear(read, p), read(p + ".bias")

    def gate_up(self, read, i: int):
        return None, self.linear(read, f"transformer.h.{i}.mlp.c_fc")

    def rotary_layer(self, i: int) -> bool:
        return False
