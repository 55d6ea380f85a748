"""``genai_config.json``: what onnxruntime-genai needs to load an edgellm ONNX bundle unchanged.

App developers ship ONNX models through onnxruntime-genai (its Java/Kotlin, Objective-C/Swift, C
and C# APIs), which reads the model folder's ``genai_config.json`` and its tokenizer files.  The
config names edgellm's graph inputs and outputs (input_ids, attention_mask, the KV cache as
``past_key_values.N.key``/``present.N.key``) and the model's shape; edgellm's own
``logits_to_keep`` input is not named, since it has a default (every position) in the graph.
genai's greedy search then produces the same tokens as ``edgellm run`` (tests/test_genai.py).
Fixed-shape NPU builds have no such config: genai grows its cache, they cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgellm.models.config import ModelConfig

FILE = "genai_config.json"
# Hugging Face model_type -> genai model type (onnxruntime-genai src/models/model_type.h): each
# of these is genai's plain decoder, and the graph itself carries what differs between families.
# genai's "gpt2" is its legacy GPT model (one combined past per layer), so GPT-2 bundles, whose
# graph has the same separate key/value cache as the rest, say "llama"
TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
         "gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3_text", "gemma3": "gemma3_text",
         "gpt2": "llama", "smollm3": "smollm3", "granite": "granite"}


def _ids(folder: Path) -> tuple[int | None, list[int], int | None]:
    from edgellm.core.files import read_json_object

    gen = read_json_object(folder / "generation_config.json")
    cfg = read_json_object(folder / "config.json")
    bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]
    pad = gen.get("pad_token_id", cfg.get("pad_token_id"))
    return (bos if isinstance(bos, int) else None), eos_ids, (pad if isinstance(pad, int) else None)


def genai_config(model: ModelConfig, bundle_dir: Path, model_file: str, context: int) -> dict:
    bos, eos, pad = _ids(bundle_dir)
    eos = eos or [0]
    return {
        "model": {
            "bos_token_id": bos if bos is not None else eos[0],
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": model.head_dim,
                "hidden_size": model.hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": model.n_heads,
                "num_hidden_layers": model.n_layers,
                "num_key_value_heads": model.n_kv_heads,
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad if pad is not None else eos[0],
            "type": TYPES.get(model.model_type, "llama"),
            "vocab_size": model.vocab,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,       # edgellm's graph grows its cache (concat)
            "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def write_genai_config(model: ModelConfig, bundle_dir: Path, model_file: str) -> None:
    context = model.max_context or 2048
    (bundle_dir / FILE).write_text(json.dumps(genai_config(model, bundle_dir, model_file, context), indent=2) + "\n")
