"""Small models edgellm builds itself, offline: a byte-level BPE tokenizer trained on text found on
every machine with Python (the standard library's own source files), and random-weight models of
each supported architecture around it.  Deterministic from a seed.  Used by the tests and by
``edgellm demo``; needs the ``[export]`` extra (torch, transformers, tokenizers).
"""

from __future__ import annotations

from pathlib import Path

from edgellm.textdata import training_files as corpus_files, training_text as corpus_text

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def train_tokenizer(vocab_size: int = 1024, limit_bytes: int = 2 << 20, text: str | None = None,
                    split_regex: str | None = None):
    """A GPT-2-style byte-level BPE tokenizer, as a transformers fast tokenizer, trained on
    ``text`` (default: the first ``limit_bytes`` of the standard library's training files);
    ``split_regex``: split text with it before the bytes, as Llama 3, Qwen and Phi-4 do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_regex is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if text is None:
        tok.train([str(p) for p in corpus_files(limit_bytes)], trainer)
    else:
        tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[2],
                                   pad_token=SPECIALS[0], unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_spm_tokenizer(folder: Path, vocab_size: int = 1000, limit_bytes: int = 1 << 20):
    """A SentencePiece BPE tokenizer with byte fallback (Llama 2's kind), trained here, as a
    transformers Llama tokenizer.  ``folder`` keeps the SentencePiece model (spm.model); saving the
    tokenizer writes tokenizer.json only, as transformers 5 does."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "corpus.txt"
    text.write_text(corpus_text(limit_bytes), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spm"), vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=1 << 16,
                                   minloglevel=2, num_threads=2, seed_sentencepiece_size=100000)
    text.unlink()
    # transformers 5 converts a tokenizer.model found in a folder (its constructor no longer reads
    # a vocab_file), as it does for a Llama 2 checkpoint downloaded from a hub
    import json
    import shutil

    from transformers import AutoTokenizer

    shutil.copyfile(folder / "spm.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHAT_TEMPLATE.replace("<|im_start|>", "<s>").replace("<|im_end|>", "</s>")
    return tok


SHAPES = {  # small shapes; hidden sizes that are multiples of 256 exercise K-quants
    "llama": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen2": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen3": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64),
    "mistral": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, sliding_window=None),
    "gpt2": dict(n_embd=256, n_layer=2, n_head=4, n_positions=1024),
    "phi3": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, original_max_position_embeddings=1024, sliding_window=None),
    "gemma": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=64),
    "gemma2": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64, sliding_window=128),
    "smollm3": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2),                  # layer 3 is a NoPE layer
    "granite": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, embedding_multiplier=12.0, attention_multiplier=0.0625,
                    residual_multiplier=0.22, logits_scaling=8.0),    # Granite 3's multipliers, scaled
    # mixtures of experts: 8 experts of which 2 per token (llama.cpp's 8-expert recipe rules apply)
    "qwen3_moe": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8,
                      num_experts_per_tok=2, norm_topk_prob=True),
    "mixtral": dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2),
    "olmoe": dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                  tie_word_embeddings=False),             # llama.cpp's olmoe graph needs an output matrix
    # LFM2: convolution, convolution, attention, convolution (intermediate 768 -> MLP of 512)
    "lfm2": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, layer_types=["conv", "conv", "full_attention", "conv"]),
    "gemma3_text": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64, sliding_window=128,
                        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0),
}


def build_model(arch: str, folder: Path, tokenizer=None, seed: int = 0, pad_vocab: int = 0,
                tied: bool | None = None, **overrides) -> Path:
    """Write a random-weight ``arch`` model with its tokenizer into ``folder`` (safetensors);
    ``tied``: the head shares the embedding (default: as the shape says, else tied)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tokenizer or train_tokenizer()
    shape = {**SHAPES[arch], **overrides}
    tied = shape.pop("tie_word_embeddings", True) if tied is None else tied
    vocab = len(tokenizer) + pad_vocab
    if arch != "gpt2":
        shape.setdefault("max_position_embeddings", 1024)
        shape["tie_word_embeddings"] = tied
    cfg = AutoConfig.for_model(arch, vocab_size=vocab, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():                       # larger than init scale, so logits are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # as transformers loads it for this model type, saved again: transformers 5 builds some
    # families' tokenizers in code (Qwen2's pre-tokenizer regex), so the folder then holds what a
    # model of that family saved by transformers holds
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)
    return folder


def build_phi4_mini(folder: Path, tokenizer=None, seed: int = 0, original_context: int = 512,
                    context: int = 2048) -> Path:
    """A random-weight model of Phi-4-mini's kind: phi3 with a partial rotary embedding (3/4 of
    each head), long-rope scaling (short and long factor tables, switched past
    ``original_context`` tokens), a tied head and the o200k split before byte-level BPE."""
    import numpy as np

    from edgellm.exporters.gguf.vocab import GPT4O_REGEX

    tokenizer = tokenizer or train_tokenizer(split_regex=GPT4O_REGEX)
    head_dim, factor = SHAPES["phi3"]["hidden_size"] // SHAPES["phi3"]["num_attention_heads"], 0.75
    pairs = int(head_dim * factor) // 2
    rng = np.random.default_rng(seed)
    rope = {"rope_type": "longrope", "long_factor": [round(float(x), 4) for x in 1 + 4 * rng.random(pairs)],
            "short_factor": [round(float(x), 4) for x in 1 + 0.2 * rng.random(pairs)]}
    return build_model("phi3", folder, tokenizer, seed=seed, partial_rotary_factor=factor, rope_scaling=rope,
                       original_max_position_embeddings=original_context, max_position_embeddings=context)


def as_saved_by_transformers4(folder: Path) -> Path:
    """Rewrite a model folder's tokenizer files the way transformers 4.x wrote them: the class
    ``PreTrainedTokenizerFast`` and the chat template inside tokenizer_config.json."""
    import json

    folder = Path(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    template = folder / "chat_template.jinja"
    if template.is_file():
        cfg["chat_template"] = template.read_text()
        template.unlink()
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return folder
