"""Rotary-embedding facts shared by the GGUF writer and the ONNX graph, computed once."""

from __future__ import annotations

import math

import numpy as np

from edgellm.errors import BadInput


def rotary_dim(cfg: dict, head_dim: int) -> int:
    """How many of each head's dimensions the rotary embedding turns (Phi-4-mini's
    ``partial_rotary_factor`` of 0.75: the first 96 of 128; transformers' int(head x factor))."""
    return int(head_dim * float(cfg.get("partial_rotary_factor", 1.0)))


def rope_kind(cfg: dict) -> str | None:
    rope = cfg.get("rope_scaling") or {}
    return rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else "?"


def llama3_factors(cfg: dict, head_dim: int, dtype=np.float32) -> np.ndarray:
    """Llama 3.1's per-frequency divisors of the rotary inverse frequencies.  GGUF stores them as
    ``rope_freqs.weight`` (computed in float32 throughout, as llama.cpp's converter does in torch,
    for identical bytes); the ONNX graph divides its frequencies by them (float64)."""
    f = dtype
    rope = cfg.get("rope_scaling") or {}
    base, dim = f(cfg.get("rope_theta", 10000.0)), head_dim
    factor = f(rope.get("factor", 8.0))
    low, high = f(rope.get("low_freq_factor", 1.0)), f(rope.get("high_freq_factor", 4.0))
    old = f(rope.get("original_max_position_embeddings", 8192))
    out = []
    for freq in f(1.0) / base ** (np.arange(0, dim, 2, dtype=f) / f(dim)):
        wavelen = f(2 * math.pi) / freq
        if wavelen < old / high:
            out.append(f(1.0))
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(f(1.0) / ((f(1.0) - smooth) / factor + smooth))
    return np.array(out, dtype=dtype)


def _longrope(cfg: dict) -> dict:
    rope = cfg.get("rope_scaling")
    return rope if isinstance(rope, dict) else {}


def longrope_original(cfg: dict, max_context: int) -> int:
    """The pretraining context past which long-rope's long factors apply."""
    return int(_longrope(cfg).get("original_max_position_embeddings")
               or cfg.get("original_max_position_embeddings") or max_context)


def longrope_attention_factor(cfg: dict, max_context: int) -> float:
    """cos and sin are multiplied by this (transformers' _compute_longrope_parameters; llama.cpp's
    converter computes the same from the two context lengths when the config names neither)."""
    rope, orig = _longrope(cfg), longrope_original(cfg, max_context)
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    scale = float(rope.get("factor") or max_context / orig)
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0


def longrope_factors(cfg: dict, rotary_dim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(long, short) divisors of the rotary frequencies, one per turned pair of dimensions."""
    rope, half = _longrope(cfg), rotary_dim // 2
    out = []
    for key in ("long_factor", "short_factor"):
        v = rope.get(key)
        if not isinstance(v, list) or len(v) != half or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1e6 for x in v):
            raise BadInput(f"{name}: config.json: rope scaling '{key}' must be {half} positive numbers "
                           f"(one per pair of the {rotary_dim} rotary dimensions)")
        out.append(np.array(v, dtype=np.float32))
    return out[0], out[1]
