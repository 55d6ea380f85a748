"""Sane bounds for the values of a config.json, checked before any of them is used.

A config.json comes from a stranger, and its numbers size everything that follows: a
``num_hidden_layers`` of 10⁹ would have the planner build a billion tensor records, a
``max_position_embeddings`` of 10¹² a KV cache estimate nobody can act on.  Each bound is far
above any released model (llama.cpp itself stops at 512 layers) and each wrong type or value is
one line naming the key.
"""

from __future__ import annotations

import math
from typing import Any

from edgellm.errors import BadInput

# key -> (least, most) for whole numbers
WHOLE = {
    "hidden_size": (1, 1 << 17), "n_embd": (1, 1 << 17),
    "num_hidden_layers": (1, 512), "n_layer": (1, 512),                # LLAMA_MAX_LAYERS
    "num_attention_heads": (1, 4096), "n_head": (1, 4096), "num_key_value_heads": (1, 4096),
    "head_dim": (1, 4096),
    "intermediate_size": (1, 1 << 20), "n_inner": (1, 1 << 20),
    "vocab_size": (1, 1 << 23),
    "max_position_embeddings": (0, 1 << 27), "n_positions": (0, 1 << 27),   # 134 M tokens
    "sliding_window": (0, 1 << 27), "sliding_window_pattern": (0, 512), "no_rope_layer_interval": (0, 512),
    "original_max_position_embeddings": (1, 1 << 27),
    # mixtures of experts (the largest released: 384 experts, 8 a token) and LFM2's blocks
    "num_experts": (1, 4096), "num_local_experts": (1, 4096), "num_experts_per_tok": (1, 4096),
    "moe_intermediate_size": (1, 1 << 20), "decoder_sparse_step": (0, 512), "block_ff_dim": (1, 1 << 20),
}
# key -> (exclusive least, most) for numbers
NUMBER = {
    "rms_norm_eps": (0.0, 1.0), "layer_norm_eps": (0.0, 1.0), "layer_norm_epsilon": (0.0, 1.0),
    "rope_theta": (0.0, 1e12), "rope_local_base_freq": (0.0, 1e12),
    "partial_rotary_factor": (0.0, 1.0),
    "attn_logit_softcapping": (0.0, 1e6), "final_logit_softcapping": (0.0, 1e6),
    "query_pre_attn_scalar": (0.0, 1e6),
    "embedding_multiplier": (0.0, 1e6), "residual_multiplier": (0.0, 1e6),
    "attention_multiplier": (0.0, 1e6), "logits_scaling": (0.0, 1e6),
}
LISTS = ("layer_types", "no_rope_layers", "mlp_only_layers", "full_attn_idxs")
FLAGS = ("tie_word_embeddings", "use_sliding_window", "attention_bias", "mlp_bias", "norm_topk_prob", "conv_bias")
# rope_scaling's own numbers (its factor lists are checked where they are read)
ROPE_NUMBERS = {"factor": (0.0, 1e6), "attention_factor": (0.0, 1e6), "low_freq_factor": (0.0, 1e6),
                "high_freq_factor": (0.0, 1e6), "beta_fast": (0.0, 1e6), "beta_slow": (0.0, 1e6),
                "mscale": (0.0, 1e6), "mscale_all_dim": (-1e6, 1e6)}


def check_values(cfg: dict[str, Any], name: str) -> None:
    """Every known size and number in ``cfg`` is of the right type and within bounds."""
    def bad(key: str, what: str) -> BadInput:
        shown = repr(cfg[key])
        shown = shown if len(shown) <= 60 else shown[:60] + "..."
        return BadInput(f"{name}: config.json: '{key}' is {shown}; {what}")

    for key, (lo, hi) in WHOLE.items():
        v = cfg.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(key, "it must be a whole number")
        if not lo <= v <= hi:
            raise bad(key, f"edgellm takes {lo} to {hi:,} (no released model is near the limit)")
    for key, (lo, hi) in NUMBER.items():
        v = cfg.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(key, "it must be a finite number")
        if not lo < v <= hi:
            raise bad(key, f"it must be above {lo:g} and at most {hi:g}")
    for key in LISTS:
        v = cfg.get(key)
        if v is not None and not (isinstance(v, list) and len(v) <= 512):
            raise bad(key, "it must be a list of at most 512 per-layer entries")
    for key in FLAGS:
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            raise bad(key, "it must be true or false")
    rs = cfg.get("rope_scaling")
    if rs is not None and not isinstance(rs, dict):
        raise bad("rope_scaling", "it must be an object (or null)")
    for key, (lo, hi) in ROPE_NUMBERS.items() if isinstance(rs, dict) else ():
        v = rs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or not lo < v <= hi):
            raise bad("rope_scaling", f"its '{key}' must be a finite number above {lo:g} and at most {hi:g}")
    orig = rs.get("original_max_position_embeddings") if isinstance(rs, dict) else None
    if orig is not None and (isinstance(orig, bool) or not isinstance(orig, int) or not 1 <= orig <= 1 << 27):
        raise bad("rope_scaling", "its 'original_max_position_embeddings' must be a whole number from 1 to "
                  f"{1 << 27:,}")
