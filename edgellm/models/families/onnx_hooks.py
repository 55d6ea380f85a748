"""What edgellm's ONNX graphs need of a family (exporters/onnx/graph.py and the static NPU graph):
where each weight lives in the Hugging Face checkpoint, the norm and activation, the rotary
tables, the attention and embedding scales."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from edgellm.errors import BadInput
from edgellm.models.families.rope import (llama3_factors, longrope_attention_factor, longrope_factors,
                                           longrope_original, rope_kind)


class OnnxHooks:
    activation: ClassVar[str] = "silu"          # or "gelu_tanh"
    layer_norm: ClassVar[bool] = False          # LayerNorm with a bias (GPT-2) instead of RMSNorm
    position_embed: ClassVar[str | None] = None  # a learned position table (GPT-2)
    embed: ClassVar[str] = "model.embed_tokens.weight"
    final_norm: ClassVar[str] = "model.norm.weight"
    head: ClassVar[str] = "lm_head.weight"

    def hf_layer(self, i: int) -> dict[str, str]:
        p = f"model.layers.{i}."
        return {"attn_norm": p + "input_layernorm.weight", "q": p + "self_attn.q_proj", "k": p + "self_attn.k_proj",
                "v": p + "self_attn.v_proj", "o": p + "self_attn.o_proj", "mlp_norm": p + "post_attention_layernorm.weight",
                "gate": p + "mlp.gate_proj", "up": p + "mlp.up_proj", "down": p + "mlp.down_proj",
                "q_norm": p + "self_attn.q_norm.weight", "k_norm": p + "self_attn.k_norm.weight"}

    def linear(self, read, name: str) -> np.ndarray:
        """A linear layer's weight [out, in] (``name`` without ".weight")."""
        return read(name + ".weight")

    def calibration_sources(self, i: int, part: str) -> list[str]:
        """Checkpoint weights whose input the graph's ``part`` matmul of layer ``i`` shares (where
        calibration recorded its statistics): qkv, o, gate, up or down."""
        names, p = self.hf_layer(i), f"model.layers.{i}."
        return {"qkv": [names["q"] + ".weight", p + "self_attn.qkv_proj.weight"], "o": [names["o"] + ".weight"],
                "gate": [names["gate"] + ".weight", p + "mlp.gate_up_proj.weight"],
                "up": [names["up"] + ".weight", p + "mlp.gate_up_proj.weight"],
                "down": [names["down"] + ".weight"]}[part]

    def qkv(self, read, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The packed [q; k; v] weight [(H + 2 KV) * D, hidden] and bias (or None)."""
        names = self.hf_layer(i)
        ws = [read(names[r] + ".weight") for r in ("q", "k", "v")]
        bias = None
        if read.has(names["q"] + ".bias"):
            bias = np.concatenate([read(names[r] + ".bias") for r in ("q", "k", "v")])
        return np.concatenate(ws), bias

    def gate_up(self, read, i: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(gate, up) weights; gate None for an ungated MLP (GPT-2: act(up))."""
        names = self.hf_layer(i)
        return read(names["gate"] + ".weight"), read(names["up"] + ".weight")

    @property
    def eps(self) -> float:
        return self.norm_eps

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.model.head_dim)

    @property
    def embed_scale(self) -> float | None:
        return None

    @property
    def residual_scale(self) -> float | None:
        """A multiplier on each attention and MLP output before it joins the residual (Granite)."""
        return None

    @property
    def logit_scale(self) -> float | None:
        """A divisor of the logits (Granite's logits_scaling)."""
        return None

    def rotary_layer(self, i: int) -> bool:
        """Whether layer ``i`` applies rotary positions (SmolLM3's NoPE layers do not)."""
        return True

    @property
    def sliding_window(self) -> int:
        """GroupQueryAttention's local_window_size (-1: full attention)."""
        ws = {w for w in self.model.windows if w is not None}
        if not ws:
            return -1
        if len(ws) > 1 or None in self.model.windows:
            raise BadInput(f"{self.model.name}: mixed sliding/full attention layers are not supported by "
                           "the ONNX exporter yet")
        return ws.pop()

    def layer_window(self, i: int) -> int:
        """GroupQueryAttention's local_window_size for layer ``i`` (-1: full attention).  Hugging
        Face's sliding_window W maps to W: measured, W - 1 disagrees with transformers on windows
        longer than W (tests/test_onnx.py scores 512-token windows against a window of 128)."""
        w = self.model.windows[i] if self.model.windows else None
        return -1 if w is None else w

    @property
    def attn_softcap(self) -> float | None:
        """tanh soft-capping of attention scores (Gemma 2)."""
        return None

    @property
    def final_softcap(self) -> float | None:
        """tanh soft-capping of the logits (Gemma 2)."""
        return None

    def rotary_kind(self, i: int) -> str:
        """Which rotary table layer ``i`` uses: "global", or "local" (Gemma 3's windowed layers)."""
        return "global"

    def rotary_caches(self, length: int, local: bool = False,
                      long: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin [length, rotary_dim / 2] as GroupQueryAttention takes them (non-interleaved;
        a partial rotary turns only the first rotary_dim of each head); ``local``: the table of
        windowed layers where the family has its own (Gemma 3); ``long``: long-rope's table for
        sequences past ``longrope_switch``."""
        dim = self.rotary_dim
        base = float(self.cfg.get("rope_local_base_freq" if local else "rope_theta", 10000.0))
        inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        pos = np.arange(length, dtype=np.float64)
        kind = None if local else rope_kind(self.cfg)
        scale = 1.0
        if kind == "linear":
            pos = pos / float(self.cfg["rope_scaling"]["factor"])
        elif kind == "llama3":
            inv = inv / llama3_factors(self.cfg, dim, np.float64)
        elif kind in ("longrope", "su"):
            # transformers: 1 / (factor x base^(2i/d)) in float32, cos and sin times the attention factor
            factors = longrope_factors(self.cfg, dim, self.name)[0 if long else 1]
            inv = (1.0 / (factors * np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))))
            inv = inv.astype(np.float64)
            scale = longrope_attention_factor(self.cfg, self.model.max_context)
        freqs = np.outer(pos, inv)
        return (np.cos(freqs) * scale).astype(np.float32), (np.sin(freqs) * scale).astype(np.float32)

    @property
    def longrope_switch(self) -> int | None:
        """Long-rope models (Phi-3.5/4-mini) turn with their short factors while the whole sequence
        fits this many tokens and with the long ones past it (transformers' longrope update); None
        for every other rotary."""
        return longrope_original(self.cfg, self.model.max_context) if rope_kind(self.cfg) in ("longrope", "su") else None
