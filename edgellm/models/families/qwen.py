"""Qwen 2/2.5 (biased q/k/v) and Qwen 3 (per-head q/k RMSNorm); NEOX rotary: no permutation."""

from __future__ import annotations

from edgellm.models.families.base import Family
from edgellm.models.families.registry import register


@register
class Qwen2(Family):
    model_types = ("qwen2",)
    gguf_arch = "qwen2"
    qkv_bias = True


@register
class Qwen3(Family):
    """q/k norms are not in the static NPU graph yet."""
    model_types = ("qwen3",)
    gguf_arch = "qwen3"
    qk_norm = True
    supports = frozenset({"gguf", "onnx", "distill"})
