"""LFM2 (issue 29, item 3): short-convolution and attention layers in GGUF, verified against
transformers; the plan's KV cache counts the attention layers and adds the convolutions' state."""

from __future__ import annotations

import json

import pytest

from test_export import assert_as_llama_quantize, export, tensor_bytes


@pytest.mark.parametrize("quant", ["F16", "Q4_K_M"])
def test_lfm2_exports_and_verifies(cli, tiny, tmp_path, quant):
    m = export(cli, tiny("lfm2"), tmp_path / "b", "--quant", quant)
    v = m["verification"]
    assert v["tokenizer"].startswith("identical")
    # a 4-bit random-weight model loses ~0.1; its bytes are llama-quantize's (the test below)
    assert v["held_out"]["mean_kld"] < (1e-3 if quant == "F16" else 0.3)
    if quant == "F16":
        assert v["logits_max_rel_diff"] < 0.05
    t = tensor_bytes(tmp_path / "b" / m["artifact"])
    assert t["blk.0.shortconv.conv.weight"][0] == "F32"        # kernels stay float32, as llama.cpp keeps them
    assert "blk.2.attn_q.weight" in t and "blk.0.attn_q.weight" not in t


def test_lfm2_is_byte_identical_to_llama_quantize(cli, tiny, tmp_path):
    assert_as_llama_quantize(cli, tiny("lfm2"), tmp_path, "Q4_K_M")


def test_the_plan_holds_kv_for_attention_layers_and_the_convolution_state(tiny):
    from edgellm import models
    from edgellm.formats.choice import BuildChoice
    from edgellm.plan.estimate import kv_bytes

    m = models.load_config(str(tiny("lfm2")))
    assert m.attention_layers == (False, False, True, False)
    assert m.kv_elements(1000) == 2 * 2 * 64 * 1000               # one attention layer: K and V, 2 heads of 64
    assert m.state_elements == 3 * 2 * 256                         # three conv layers keep L_cache - 1 inputs
    c = BuildChoice.from_dict({"format": "gguf", "quant": "F16", "kv_cache": "f16"})
    assert kv_bytes(m, c, 1000) == 2 * m.kv_elements(1000) + 4 * m.state_elements


def test_lfm2_refusals_are_one_line(cli, tiny, tmp_path):
    folder = tiny("lfm2")
    for flags, want in [(["--format", "onnx", "--quant", "fp32"], "ONNX export does not support 'lfm2'"),
                        (["--quant", "Q4_K_M", "--calibrate"], "--calibrate does not support LFM2")]:
        r = cli("export", str(folder), "--device", "laptop-x86-16gb", "-o", str(tmp_path / "o"), *flags)
        assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "o").exists()
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["layer_types"] = ["conv", "mamba", "full_attention", "conv"]
    (bad / "config.json").write_text(json.dumps(cfg))
    r = cli("plan", str(bad), "--device", "rpi5")
    assert r.returncode == 2 and "'layer_types' must list 'conv' or 'full_attention'" in r.stderr
    for kind in ("conv", "full_attention"):      # llama.cpp aborts on the first, transformers on the second
        cfg["layer_types"] = [kind] * 4
        (bad / "config.json").write_text(json.dumps(cfg))
        r = cli("export", str(bad), "--device", "rpi5", "--quant", "F16", "-o", str(tmp_path / "o"))
        assert r.returncode == 2 and "needs both convolution and attention layers" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_hybrid_file_with_one_kind_of_layer_is_refused_before_llama_cpp_runs():
    """A bundle from elsewhere: an lfm2 GGUF whose every layer attends aborts llama.cpp (its hybrid
    cache gets no convolution buffer), so the file check refuses it first."""
    from edgellm.runtime import gguf_meta

    meta = {"lfm2.attention.head_count": 4, "lfm2.attention.head_count_kv": [2, 2, 2, 2], "lfm2.embedding_length": 256}
    with pytest.raises(ValueError, match="every layer is an attention layer; llama.cpp needs both kinds"):
        gguf_meta._heads(meta, "lfm2", 4, ValueError)
    meta["lfm2.attention.head_count_kv"] = [0, 0, 2, 0]
    gguf_meta._heads(meta, "lfm2", 4, ValueError)
    meta["llama.attention.head_count_kv"] = meta.pop("lfm2.attention.head_count_kv")    # elsewhere 0 stays refused
    meta["llama.attention.head_count"], meta["llama.embedding_length"] = 4, 256
    with pytest.raises(ValueError, match="over 0 KV heads"):
        gguf_meta._heads(meta, "llama", 4, ValueError)
