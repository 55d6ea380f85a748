"""Rotary-embedding facts shared by the GGUF writer and the ONNX graph, computed once."""

from __future__ import annotations

import math

import numpy as np


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
