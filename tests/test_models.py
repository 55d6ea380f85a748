import json
from pathlib import Path

import pytest

from edgellm import models
from edgellm.errors import BadInput, Unreachable

# Parameter counts as published on each model's hub page (safetensors metadata).
PUBLISHED = {
    "microsoft/Phi-4-mini-instruct": 3_836_021_760,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008,
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "Qwen/Qwen3-0.6B": 596_049_920,
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
    "google/gemma-3-1b-it": 999_885_952,
    "google/gemma-3-270m-it": 268_098_176,
    "google/gemma-2-2b-it": 2_614_341_888,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    "mistralai/Mistral-7B-Instruct-v0.3": 7_248_023_552,
    "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
    "meta-llama/Llama-3.1-70B-Instruct": 70_553_706_496,
    "openai-community/gpt2": 124_439_808,
}
# Only the rounded figure the hub page shows is known here for these (no hub to read them from).
PUBLISHED_ROUNDED = {
    "HuggingFaceTB/SmolLM3-3B": 3.08e9,
    "ibm-granite/granite-3.3-2b-instruct": 2.53e9,
    "Qwen/Qwen3-30B-A3B": 30.53e9,                          # model card: 30.5B total, 3.3B activated
    "allenai/OLMoE-1B-7B-0125-Instruct": 6.92e9,            # model card: 6.92B (1B active)
}


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED))
def test_parameter_counts_match_published(hub_id):
    m = models.load_config(hub_id)
    assert m.n_params == PUBLISHED[hub_id]
    assert m.source.startswith("bundled example")


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED_ROUNDED))
def test_parameter_counts_match_published_rounded(hub_id):
    assert abs(models.load_config(hub_id).n_params - PUBLISHED_ROUNDED[hub_id]) < 0.005e9


def test_every_bundled_config_has_a_published_count():
    assert set(models.bundled_ids()) == set(PUBLISHED) | set(PUBLISHED_ROUNDED)


def test_local_folder_wins_and_reads_only_config(model_dir):
    cfg = json.loads(json.dumps(models.load_config("Qwen/Qwen2.5-0.5B-Instruct").raw))
    cfg["num_hidden_layers"] = 2
    d = model_dir(cfg)
    (d / "model.safetensors").write_bytes(b"not read")
    m = models.load_config(str(d))
    assert m.n_layers == 2 and m.source.startswith("local folder")
    assert models.load_config(str(d / "config.json")).n_layers == 2


def test_hf_cache_is_used_before_bundled(tmp_path):
    snap = tmp_path / "hf-cache" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    cfg = dict(models.load_config("Qwen/Qwen2.5-0.5B-Instruct").raw, num_hidden_layers=3)
    (snap / "config.json").write_text(json.dumps(cfg))
    m = models.load_config("Qwen/Qwen2.5-0.5B-Instruct")
    assert m.n_layers == 3 and m.source.startswith("Hugging Face cache")


def test_sliding_windows_shrink_gemma_caches():
    g2 = models.load_config("google/gemma-2-2b-it")
    assert g2.windows[:2] == (4096, None)
    g3 = models.load_config("google/gemma-3-1b-it")
    assert g3.windows[:6] == (512,) * 5 + (None,)
    per_token_layer = 2 * g3.n_kv_heads * g3.head_dim
    full = sum(1 for w in g3.windows if w is None)
    assert g3.kv_elements(8192) == per_token_layer * (full * 8192 + (g3.n_layers - full) * 512)


def test_mistral_cache_is_not_windowed():
    assert set(models.load_config("mistralai/Mistral-7B-Instruct-v0.3").windows) == {None}


@pytest.mark.parametrize("cfg,message", [
    ({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}, "architecture 'mamba' is not supported; supported: gemma"),
    ({"model_type": "mycustom", "auto_map": {"AutoModel": "x.Y"}}, "ships custom code through auto_map"),
    ({"architectures": ["Foo"]}, "has no 'model_type'"),
    ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"], "hidden_size": 64},
     "is not a causal language model"),
    ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
      "vocab_size": 100}, "'intermediate_size' must be a positive integer for llama models \\(missing\\)"),
    ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3,
      "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}, "not a multiple of num_key_value_heads"),
])
def test_bad_configs_are_explained(model_dir, cfg, message):
    with pytest.raises(BadInput, match=message):
        models.load_config(str(model_dir(cfg)))


def test_malformed_and_missing_config(tmp_path, model_dir):
    d = model_dir({})
    (d / "config.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        models.load_config(str(d))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="no config.json in this folder"):
        models.load_config(str(empty))
    with pytest.raises(BadInput, match="no such file or folder"):
        models.load_config(str(tmp_path / "nope"))


def test_unknown_hub_id_offline_is_one_clear_error():
    with pytest.raises(Unreachable, match="HF_HUB_OFFLINE is set"):
        models.load_config("someone/unknown-model")


def test_unknown_hub_id_without_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")      # nothing listens on the discard port
    with pytest.raises(Unreachable, match="cannot reach the hub"):
        models.load_config("someone/unknown-model")


def test_a_mixture_of_experts_counts_what_a_token_uses():
    assert abs(models.load_config("Qwen/Qwen3-30B-A3B").n_active_params - 3.3e9) < 0.06e9
    assert abs(models.load_config("allenai/OLMoE-1B-7B-0125-Instruct").n_active_params - 1.28e9) < 0.01e9


EXAMPLES = Path(__file__).parent.parent / "edgellm" / "models" / "examples"


@pytest.mark.parametrize("example,change,message", [
    # an activation llama.cpp's graph for the family does not compute: a different model
    ("Qwen--Qwen2.5-0.5B-Instruct.json", {"hidden_act": "gelu"}, "hidden_act 'gelu', but llama.cpp's qwen2 graph"),
    ("google--gemma-3-1b-it.json", {"hidden_activation": "relu"}, "llama.cpp's gemma3 graph .* compute gelu_new"),
    ("openai-community--gpt2.json", {"activation_function": "relu"}, "activation_function 'relu'"),
    ("google--gemma-2-2b-it.json", {"hidden_activation": "silu"}, "hidden_activation 'silu'"),
    # transformers follows layer_types, llama.cpp its own pattern: they must agree
    ("google--gemma-3-1b-it.json", {"layer_types": ["full_attention"] * 26},
     "is not the layout llama.cpp's gemma3 graph runs \\(full attention on layer\\(s\\) 5, 11"),
    ("google--gemma-3-1b-it.json", {"sliding_window": 0}, "need a 'sliding_window' of at least 1"),
    ("Qwen--Qwen2.5-0.5B-Instruct.json", {"layer_types": ["x"] * 24}, "'full_attention' or 'sliding_attention'"),
])
def test_configs_that_would_build_another_model_are_refused(example, change, message):
    import json

    from edgellm.models.families import from_config_dict

    cfg = {**json.loads((EXAMPLES / example).read_text()), **change}
    with pytest.raises(BadInput, match=message):
        from_config_dict(cfg, example)


def test_the_published_configs_name_the_layouts_llama_cpp_runs():
    """The layout a real config's layer_types would give (transformers 5's own rule for Gemma 3:
    every 6th layer full) passes the check."""
    import json

    from edgellm.models.families import from_config_dict

    cfg = json.loads((EXAMPLES / "google--gemma-3-1b-it.json").read_text())
    n = cfg["num_hidden_layers"]
    cfg["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    assert from_config_dict(cfg, "gemma-3-1b").windows.count(None) == n // 6
