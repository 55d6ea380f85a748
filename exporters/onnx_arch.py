"""Per-architecture facts the ONNX graph builder needs: where each weight lives in the Hugging
Face checkpoint, the norm and activation, rotary settings.  One small class per family."""

from __future__ import annotations

import math

import numpy as np

from edgellm.errors import BadInput
from edgellm.models.config import ModelConfig

_REGISTRY: dict[str, type["OnnxArch"]] = {}


def register(cls):
    for t in cls.model_types:
        _REGISTRY[t] = cls
    return cls


def supported() -> list[str]:
    return sorted(_REGISTRY)


def for_model(model: ModelConfig) -> "OnnxArch":
    cls = _REGISTRY.get(model.model_type)
    if cls is None:
        raise BadInput(f"{model.name}: ONNX export does not support architecture {model.model_type!r}; "
                       f"supported: {', '.join(supported())} (GGUF export covers more)")
    arch = cls(model)
    arch.check()
    return arch


class OnnxArch:
    """Llama layout: RMSNorm, rotary, SiLU-gated MLP; separate q/k/v and gate/up projections."""

    model_types: tuple[str, ...] = ()
    activation = "silu"             # or "gelu_tanh"
    norm_offset = 0.0               # Gemma stores RMSNorm weights as (w - 1)
    qk_norm = False                 # Qwen3: RMSNorm on each query/key head

    def __init__(self, model: ModelConfig):
        self.model = model
        self.cfg = model.raw

    def check(self) -> None:
        rope = self.cfg.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type"))
        if kind not in (None, "default", "linear", "llama3"):
            raise BadInput(f"{self.model.name}: rope scaling {kind!r} is not supported by the ONNX exporter yet")
        if self.cfg.get("partial_rotary_factor", 1.0) != 1.0:
            raise BadInput(f"{self.model.name}: partial rotary embeddings are not supported by the ONNX exporter yet")

    # --- names -----------------------------------------------------------------------------
    embed = "model.embed_tokens.weight"
    final_norm = "model.norm.weight"
    head = "lm_head.weight"

    def layer(self, i: int) -> dict[str, str]:
        p = f"model.layers.{i}."
        return {"attn_norm": p + "input_layernorm.weight", "q": p + "self_attn.q_proj", "k": p + "self_attn.k_proj",
                "v": p + "self_attn.v_proj", "o": p + "self_attn.o_proj", "mlp_norm": p + "post_attention_layernorm.weight",
                "gate": p + "mlp.gate_proj", "up": p + "mlp.up_proj", "down": p + "mlp.down_proj",
                "q_norm": p + "self_attn.q_norm.weight", "k_norm": p + "self_attn.k_norm.weight"}

    def qkv(self, read, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The packed [q; k; v] weight [(H + 2 KV) * D, hidden] and bias (or None)."""
        names = self.layer(i)
        ws = [read(names[r] + ".weight") for r in ("q", "k", "v")]
        bias = None
        if read.has(names["q"] + ".bias"):
            bias = np.concatenate([read(names[r] + ".bias") for r in ("q", "k", "v")])
        return np.concatenate(ws), bias

    def gate_up(self, read, i: int) -> tuple[np.ndarray, np.ndarray]:
        names = self.layer(i)
        return read(names["gate"] + ".weight"), read(names["up"] + ".weight")

    # --- numbers ---------------------------------------------------------------------------
    @property
    def eps(self) -> float:
        return float(self.cfg.get("rms_norm_eps", 1e-6))

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.model.head_dim)

    @property
    def embed_scale(self) -> float | None:
        return None

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

    def rotary_caches(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin [length, head_dim / 2] as GroupQueryAttention takes them (non-interleaved)."""
        dim = self.model.head_dim
        base = float(self.cfg.get("rope_theta", 10000.0))
        inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        rope = self.cfg.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type"))
        pos = np.arange(length, dtype=np.float64)
        if kind == "linear":
            pos = pos / float(rope["factor"])
        elif kind == "llama3":
            factor, low, high = float(rope.get("factor", 8.0)), float(rope.get("low_freq_factor", 1.0)), \
                float(rope.get("high_freq_factor", 4.0))
            old = float(rope.get("original_max_position_embeddings", 8192))
            wavelen = 2 * math.pi / inv
            smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
            scaled = np.where(wavelen > old / low, inv / factor, (1 - smooth) * inv / factor + smooth * inv)
            inv = np.where(wavelen < old / high, inv, scaled)
        freqs = np.outer(pos, inv)
        return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


@register
class Llama(OnnxArch):
    model_types = ("llama", "mistral", "qwen2")


@register
class Qwen3(OnnxArch):
    model_types = ("qwen3",)
    qk_norm = True


@register
class Phi3(OnnxArch):
    model_types = ("phi3",)

    def qkv(self, read, i: int):
        p = f"model.layers.{i}."
        return read(p + "self_attn.qkv_proj.weight"), None

    def gate_up(self, read, i: int):
        w = read(f"model.layers.{i}.mlp.gate_up_proj.weight")
        half = w.shape[0] // 2
        return w[:half], w[half:]


@register
class Gemma(OnnxArch):
    model_types = ("gemma",)
    activation = "gelu_tanh"
    norm_offset = 1.0

    @property
    def embed_scale(self) -> float | None:
        return math.sqrt(self.model.hidden)

    @property
    def attention_scale(self) -> float:
        return float(self.cfg.get("query_pre_attn_scalar", self.model.head_dim)) ** -0.5
