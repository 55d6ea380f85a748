"""The per-tensor types and byte counts llama.cpp would write, checked by hand and against the
two files llama.cpp wrote for a Qwen2.5-0.5B-shaped model (shared anchors)."""

from collections import Counter

import pytest

from edgellm import models
from edgellm.formats.ggml_types import TYPES, fit_type
from edgellm.formats.gguf_recipes import tensor_types, use_more_bits


def data_bytes(m, ftype):
    return sum(TYPES[ty].row_bytes(t.ne0) * t.ne1 for t, ty in tensor_types(m, ftype))


def types_of(m, ftype):
    return {t.name: ty for t, ty in tensor_types(m, ftype)}


@pytest.fixture(scope="module")
def qwen():
    return models.load_config("Qwen/Qwen2.5-0.5B-Instruct")


@pytest.fixture(scope="module")
def llama1b():
    return models.load_config("meta-llama/Llama-3.2-1B-Instruct")


def test_block_layouts():
    assert TYPES["Q4_K"].row_bytes(256) == 144 and TYPES["Q6_K"].row_bytes(512) == 420
    assert TYPES["Q8_0"].row_bytes(896) == 28 * 34
    assert TYPES["Q4_K"].bits_per_weight == 4.5
    with pytest.raises(ValueError):
        TYPES["Q4_K"].row_bytes(896)


def test_fallbacks_for_rows_not_divisible_by_256():
    assert fit_type("Q4_K", 896) == "Q5_0"
    assert fit_type("Q6_K", 896) == "Q8_0"
    assert fit_type("Q2_K", 896) == "Q4_0"
    assert fit_type("IQ4_XS", 896) == "IQ4_NL"
    assert fit_type("Q4_K", 100) == "F16"          # not even a multiple of 32
    assert fit_type("Q4_K", 4864) == "Q4_K"


def test_use_more_bits_layers():
    assert [i for i in range(24) if use_more_bits(i, 24)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]


def test_f16_matches_hand_count(qwen):
    # 2-D tensors in F16, norms and biases in F32
    vec = 24 * (2 * 896 + 896 + 128 + 128) + 896
    assert data_bytes(qwen, "F16") == (qwen.n_params - vec) * 2 + vec * 4 == 988_208_640


def test_q4_k_m_matches_hand_count(qwen):
    t = types_of(qwen, "Q4_K_M")
    assert t["token_embd.weight"] == "Q8_0"          # tied: output rules, 896 % 256 -> Q8_0
    assert t["blk.0.attn_q.weight"] == "Q5_0"        # Q4_K fallback
    assert t["blk.0.attn_v.weight"] == "Q8_0" and t["blk.3.attn_v.weight"] == "Q5_0"
    assert t["blk.5.ffn_down.weight"] == "Q6_K" and t["blk.4.ffn_down.weight"] == "Q4_K"
    q5 = lambda n: n // 32 * 22
    per_layer = 2 * q5(896 * 896) + q5(896 * 128) + 2 * q5(896 * 4864) + 4 * (2 * 896 + 1152)
    more = 12 * (896 * 128 // 32 * 34 + 4864 * 896 // 256 * 210)
    fewer = 12 * (q5(896 * 128) + 4864 * 896 // 256 * 144)
    embd = 151936 * 896 // 32 * 34
    assert data_bytes(qwen, "Q4_K_M") == 24 * per_layer + more + fewer + embd + 896 * 4 == 391_859_712


def test_both_anchor_files_differ_from_data_by_the_same_metadata(qwen):
    # llama.cpp wrote 991,812,736 B (F16) and 395,463,808 B (Q4_K_M) for this shape
    assert 991_812_736 - data_bytes(qwen, "F16") == 395_463_808 - data_bytes(qwen, "Q4_K_M")


def test_k_quant_friendly_model_uses_k_types(llama1b):
    t = types_of(llama1b, "Q4_K_M")
    assert t["token_embd.weight"] == "Q6_K"          # tied embeddings take the output's type
    assert t["blk.0.attn_q.weight"] == "Q4_K"
    # use_more_bits(i, 16) holds for layers 0, 1, 4, 7, 10, 13, 14, 15
    assert Counter(v for k, v in t.items() if "attn_v" in k) == Counter({"Q6_K": 8, "Q4_K": 8})
    assert types_of(llama1b, "Q8_0")["token_embd.weight"] == "Q8_0"
    assert types_of(llama1b, "Q4_0")["token_embd.weight"] == "Q6_K"
    assert types_of(llama1b, "F16")["blk.0.attn_norm.weight"] == "F32"


def test_q3_k_m_and_q2_k_recipes(llama1b):
    t = types_of(llama1b, "Q3_K_M")
    assert [t[f"blk.{i}.attn_v.weight"] for i in range(3)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert t["blk.0.ffn_down.weight"] == "Q5_K" and t["blk.1.ffn_down.weight"] == "Q4_K"
    assert t["blk.0.attn_output.weight"] == "Q4_K" and t["blk.0.ffn_up.weight"] == "Q3_K"
    t = types_of(llama1b, "Q2_K")
    assert t["blk.0.attn_v.weight"] == "Q4_K"        # GQA ratio 4
    assert t["blk.0.ffn_down.weight"] == "Q3_K" and t["blk.0.attn_output.weight"] == "Q3_K"


def test_iq4_xs_recipe(llama1b):
    t = types_of(llama1b, "IQ4_XS")
    assert t["blk.0.attn_v.weight"] == "Q5_K" and t["blk.0.ffn_down.weight"] == "Q5_K"
    assert t["blk.2.ffn_down.weight"] == "IQ4_XS"


def test_70b_bumps_attn_v():
    t = types_of(models.load_config("meta-llama/Llama-3.1-70B-Instruct"), "Q4_K_M")
    assert t["blk.10.attn_v.weight"] == "Q5_K"       # not a use_more_bits layer, bumped for 70B
    assert t["blk.4.attn_v.weight"] == "Q6_K"        # first eighth (layers 0-9) get more bits
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q4_K"


def test_phi3_fused_qkv_counts_as_attn_v():
    t = types_of(models.load_config("microsoft/Phi-3-mini-4k-instruct"), "Q4_K_M")
    assert t["blk.0.attn_qkv.weight"] == "Q6_K" and t["blk.4.attn_qkv.weight"] == "Q4_K"


def test_position_embeddings_and_norms_are_never_quantized():
    t = types_of(models.load_config("openai-community/gpt2"), "Q4_K_M")
    assert t["position_embd.weight"] == "F16" and t["blk.0.attn_norm.bias"] == "F32"
    assert "output.weight" not in t
